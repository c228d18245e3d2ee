//! Creating links through write-svc's gRPC API, as the gateway does.

use shortfleet_proto::v1::{
    CreateLinkRequest, CreateLinkResponse, Link, link_writer_client::LinkWriterClient,
};
use tonic::transport::Channel;

/// A create of `url` for `owner` with no options.
pub fn create_request(owner: &str, url: &str) -> CreateLinkRequest {
    CreateLinkRequest {
        owner: owner.into(),
        url: url.into(),
        ..Default::default()
    }
}

/// Creates `url` for `owner` with no options; panics on refusal.
pub async fn create(
    client: &mut LinkWriterClient<Channel>,
    owner: &str,
    url: &str,
) -> CreateLinkResponse {
    client
        .create_link(create_request(owner, url))
        .await
        .unwrap_or_else(|s| panic!("creating {url} for {owner}: {s:?}"))
        .into_inner()
}

/// The link of a create response, which must carry one.
pub fn link_of(response: &CreateLinkResponse) -> Link {
    response
        .link
        .clone()
        .expect("a create response carries its link")
}
