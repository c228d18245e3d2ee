//! The `LinkWriter` gRPC service: validation in, store call, status out.
//! Every string field passes [`validate`] (the fleet's input policy first)
//! before anything reaches PostgreSQL.

use shortfleet_common::input::prefix;
use shortfleet_proto::v1::{
    CreateLinkRequest, CreateLinkResponse, DeleteLinkRequest, DeleteLinkResponse, GetLinkRequest,
    Link, ListCrawlableRequest, ListCrawlableResponse, ListLinksRequest, ListLinksResponse,
    UpdateLinkRequest, link_writer_server::LinkWriter,
};
use tonic::{Request, Response, Status};

use crate::{
    behaviour,
    cursor::{Cursor, CursorKey},
    error::WriteError,
    store::Store,
    target::TargetRules,
    validate,
};

const DEFAULT_PAGE: u32 = 20;
const MAX_PAGE: u32 = 100;
/// robots.txt names at most this many crawlable codes (about 100 KB).
const MAX_CRAWLABLE: u32 = 10_000;

pub struct LinkWriterService {
    store: Store,
    /// What targets may not point at (our own hosts, private networks).
    targets: TargetRules,
    /// Signs and checks `ListLinks` cursors.
    cursor_key: CursorKey,
}

impl LinkWriterService {
    pub fn new(store: Store, targets: TargetRules, cursor_key: CursorKey) -> Self {
        Self {
            store,
            targets,
            cursor_key,
        }
    }
}

#[tonic::async_trait]
impl LinkWriter for LinkWriterService {
    #[tracing::instrument(skip_all, fields(owner = %prefix(&request.get_ref().owner)))]
    async fn create_link(
        &self,
        request: Request<CreateLinkRequest>,
    ) -> Result<Response<CreateLinkResponse>, Status> {
        let req = request.into_inner();
        let mut new = validate::new_link(&req, &self.targets)?;
        let idempotency = validate::idempotency_key(&req)?;
        if let Some(plain) = new.behaviour.password_hash.take() {
            new.behaviour.password_hash = Some(behaviour::hash_password(plain).await?);
        }
        let response = self.store.create(new, idempotency).await?;
        if response.created {
            metrics::counter!("shortfleet_links_created_total").increment(1);
        }
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all, fields(code = %prefix(&request.get_ref().code)))]
    async fn get_link(&self, request: Request<GetLinkRequest>) -> Result<Response<Link>, Status> {
        let req = request.into_inner();
        let code = validate::code(&req.code)?;
        let owner = validate::owner_filter(&req.owner)?;
        Ok(Response::new(self.store.get(code, owner).await?))
    }

    #[tracing::instrument(skip_all, fields(code = %prefix(&request.get_ref().code)))]
    async fn update_link(
        &self,
        request: Request<UpdateLinkRequest>,
    ) -> Result<Response<Link>, Status> {
        let req = request.into_inner();
        let code = validate::code(&req.code)?;
        let owner = validate::owner(&req.owner)?;
        let mut change = validate::change(&req, &self.targets)?;
        if let Some(Some(plain)) = change.password_hash.take() {
            change.password_hash = Some(Some(behaviour::hash_password(plain).await?));
        } else if req.clear_password {
            change.password_hash = Some(None);
        }
        Ok(Response::new(
            self.store.update(code, &owner, change).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(code = %prefix(&request.get_ref().code)))]
    async fn delete_link(
        &self,
        request: Request<DeleteLinkRequest>,
    ) -> Result<Response<DeleteLinkResponse>, Status> {
        let req = request.into_inner();
        let code = validate::code(&req.code)?;
        let owner = validate::owner(&req.owner)?;
        self.store.delete(code, &owner).await?;
        Ok(Response::new(DeleteLinkResponse {}))
    }

    async fn list_crawlable(
        &self,
        request: Request<ListCrawlableRequest>,
    ) -> Result<Response<ListCrawlableResponse>, Status> {
        let limit = match request.get_ref().limit {
            0 => MAX_CRAWLABLE,
            n @ 1..=MAX_CRAWLABLE => n,
            _ => return Err(WriteError::invalid("limit", "must be between 1 and 10000").into()),
        };
        Ok(Response::new(ListCrawlableResponse {
            codes: self.store.crawlable_codes(limit).await?,
        }))
    }

    #[tracing::instrument(skip_all, fields(owner = %prefix(&request.get_ref().owner)))]
    async fn list_links(
        &self,
        request: Request<ListLinksRequest>,
    ) -> Result<Response<ListLinksResponse>, Status> {
        let req = request.into_inner();
        let owner = validate::owner(&req.owner)?;
        let limit = match req.limit {
            0 => DEFAULT_PAGE,
            n @ 1..=MAX_PAGE => n,
            _ => return Err(WriteError::invalid("limit", "must be between 1 and 100").into()),
        };
        let cursor = match shortfleet_common::input::CURSOR.check(&req.cursor)? {
            "" => None,
            token => Some(
                Cursor::decode(token, &self.cursor_key, &owner)
                    .ok_or_else(|| WriteError::invalid("cursor", "is not a cursor we issued"))?,
            ),
        };
        let tag =
            Some(shortfleet_common::input::TAG_FILTER.check(&req.tag)?).filter(|t| !t.is_empty());
        let (links, next) = self.store.list(&owner, limit, cursor, tag).await?;
        Ok(Response::new(ListLinksResponse {
            links,
            next_cursor: next
                .map(|c| c.encode(&self.cursor_key, &owner))
                .unwrap_or_default(),
        }))
    }
}

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shortfleet_links_created_total",
        metrics::Unit::Count,
        "Links created (an existing link returned again is not counted)."
    );
}
