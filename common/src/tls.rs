//! Mutual TLS between the fleet's services, and who may call what.
//!
//! Off unless `SHORTFLEET_TLS_CERT`, `SHORTFLEET_TLS_KEY` and
//! `SHORTFLEET_TLS_CA` are all set (PEM files: this service's certificate
//! chain, its private key, and the fleet CA). Then:
//!
//! - every gRPC server asks for a client certificate and refuses a handshake
//!   without one signed by the fleet CA;
//! - every gRPC client presents its own certificate and checks the server's
//!   against the fleet CA *and* the callee's service name (`write-svc`,
//!   `read-svc`, …), whatever address it dialled, so a replica reached by IP
//!   is still proven to be that service;
//! - each server admits only its allowed callers
//!   (`SHORTFLEET_TLS_ALLOWED_CALLERS`, e.g. `gateway,read-svc:GetLink`): a
//!   caller is the first name its certificate is valid for, and it may call
//!   every method or only those listed after `:` (separated by `|`). Anyone
//!   else gets PERMISSION_DENIED. Health and reflection stay open to any
//!   fleet certificate (operators' tools).
//!
//! Owner-scoped methods (`CreateLink`, `ListLinks`, `TopLinks`, …) take
//! `owner` from the request, so they are listed only for the gateway, which
//! sets it from the API key it authenticated; read-svc may call write-svc's
//! `GetLink` (its cache fill, which asks with no owner) and nothing else.
//!
//! Without TLS (local runs on loopback) every caller is trusted; in
//! Kubernetes the NetworkPolicies still admit only the same callers.

use std::{
    convert::Infallible,
    path::Path,
    str::FromStr,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tonic::transport::{
    Certificate, CertificateDer, ClientTlsConfig, Identity, ServerTlsConfig,
    server::{TcpConnectInfo, TlsConnectInfo},
};

use crate::config::ConfigReader;

pub const CERT_KEY: &str = "SHORTFLEET_TLS_CERT";
pub const KEY_KEY: &str = "SHORTFLEET_TLS_KEY";
pub const CA_KEY: &str = "SHORTFLEET_TLS_CA";
pub const CALLERS_KEY: &str = "SHORTFLEET_TLS_ALLOWED_CALLERS";

/// The name each service's certificate is issued for (a DNS SAN); clients
/// check the callee's certificate against it.
pub mod names {
    pub const GATEWAY: &str = "gateway";
    pub const WRITE_SVC: &str = "write-svc";
    pub const READ_SVC: &str = "read-svc";
    pub const CLICK_LOGGER: &str = "click-logger";
    pub const ANALYTICS_SVC: &str = "analytics-svc";
}

/// A handshake that has not finished by then is dropped, so a peer that
/// opens a socket and stalls cannot hold it.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// This service's fleet identity and its callers. `Debug` never prints the
/// key.
#[derive(Clone)]
pub struct FleetTls {
    cert_pem: Arc<[u8]>,
    key_pem: Arc<[u8]>,
    ca_pem: Arc<[u8]>,
    callers: Callers,
}

impl std::fmt::Debug for FleetTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetTls")
            .field("key", &"<redacted>")
            .field("callers", &self.callers)
            .finish_non_exhaustive()
    }
}

impl FleetTls {
    /// Reads the TLS keys: `None` when none is set (plaintext), an error
    /// recorded on `r` when only some are, a file is unreadable or not a
    /// usable certificate/key. `default_callers` is this service's caller
    /// list when `SHORTFLEET_TLS_ALLOWED_CALLERS` is unset.
    pub fn read(r: &mut ConfigReader<'_>, default_callers: &str) -> Option<Self> {
        let [cert, key, ca] = [CERT_KEY, KEY_KEY, CA_KEY].map(|k| r.raw(k).map(str::to_owned));
        let callers_raw = r.string(CALLERS_KEY, default_callers);
        let callers = match callers_raw.parse::<Callers>() {
            Ok(c) => c,
            Err(e) => {
                r.invalid(CALLERS_KEY, e);
                return None;
            }
        };
        let (cert, key, ca) = match (cert, key, ca) {
            (None, None, None) => return None,
            (Some(cert), Some(key), Some(ca)) => (cert, key, ca),
            _ => {
                r.invalid(
                    "SHORTFLEET_TLS_*",
                    format!("set all of {CERT_KEY}, {KEY_KEY} and {CA_KEY}, or none"),
                );
                return None;
            }
        };
        let mut load = |name: &str, path: &str| match std::fs::read(Path::new(path)) {
            Ok(bytes) => Some(Arc::<[u8]>::from(bytes)),
            Err(e) => {
                r.invalid(name, format!("cannot read {path}: {e}"));
                None
            }
        };
        let tls = Self {
            cert_pem: load(CERT_KEY, &cert)?,
            key_pem: load(KEY_KEY, &key)?,
            ca_pem: load(CA_KEY, &ca)?,
            callers,
        };
        // Building both sides now turns a bad PEM into a configuration error
        // at start-up instead of a failed handshake later.
        if let Err(e) = tonic::transport::Server::builder().tls_config(tls.server_config()) {
            r.invalid(
                "SHORTFLEET_TLS_*",
                format!("not a usable certificate/key: {e}"),
            );
            return None;
        }
        if let Err(e) = tonic::transport::Endpoint::from_static("https://fleet.invalid")
            .tls_config(tls.client_config(names::GATEWAY))
        {
            r.invalid(
                "SHORTFLEET_TLS_*",
                format!("not a usable certificate/key: {e}"),
            );
            return None;
        }
        Some(tls)
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }

    /// The server side: our identity, client certificates required and
    /// checked against the fleet CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// The client side for a call to `service` (one of [`names`]).
    pub fn client_config(&self, service: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(self.identity())
            .domain_name(service)
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// The guard for this server's own methods.
    pub fn caller_check(&self) -> RequireCaller {
        RequireCaller {
            callers: Some(self.callers.clone()),
        }
    }
}

/// Who may call this server, and which methods (see the module docs).
#[derive(Debug, Clone)]
pub struct Callers(Arc<[Caller]>);

#[derive(Debug)]
struct Caller {
    name: rustls_pki_types::ServerName<'static>,
    /// `None`: every method of the service.
    methods: Option<Vec<String>>,
}

impl FromStr for Callers {
    type Err = String;

    /// `gateway,read-svc:GetLink|Resolve`.
    fn from_str(s: &str) -> Result<Self, String> {
        let callers = s
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|entry| {
                let (name, methods) = match entry.split_once(':') {
                    Some((name, methods)) => (
                        name,
                        Some(methods.split('|').map(|m| m.trim().to_owned()).collect()),
                    ),
                    None => (entry, None),
                };
                let name = rustls_pki_types::ServerName::try_from(name.to_owned())
                    .map_err(|_| format!("{name:?} is not a certificate name"))?;
                Ok(Caller { name, methods })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self(callers.into()))
    }
}

/// Why a call was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    NoCertificate,
    UnknownCaller,
    MethodNotAllowed,
}

impl Denied {
    fn label(&self) -> &'static str {
        match self {
            Self::NoCertificate => "no_certificate",
            Self::UnknownCaller => "unknown_caller",
            Self::MethodNotAllowed => "method_not_allowed",
        }
    }
}

impl Callers {
    /// May the holder of `cert` call `method` (the last segment of the gRPC
    /// path)? Returns the caller's name.
    pub fn authorize(&self, cert: &CertificateDer<'_>, method: &str) -> Result<String, Denied> {
        let cert = webpki::EndEntityCert::try_from(cert).map_err(|_| Denied::NoCertificate)?;
        let caller = self
            .0
            .iter()
            .find(|c| cert.verify_is_valid_for_subject_name(&c.name).is_ok())
            .ok_or(Denied::UnknownCaller)?;
        match &caller.methods {
            Some(methods) if !methods.iter().any(|m| m == method) => Err(Denied::MethodNotAllowed),
            _ => Ok(caller.name.to_str().into_owned()),
        }
    }
}

/// Tower layer refusing calls from callers this server does not admit.
/// Without TLS (`callers: None`) it passes everything.
#[derive(Debug, Clone, Default)]
pub struct RequireCaller {
    callers: Option<Callers>,
}

impl<S> tower::Layer<S> for RequireCaller {
    type Service = CallerCheck<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallerCheck {
            inner,
            callers: self.callers.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CallerCheck<S> {
    inner: S,
    callers: Option<Callers>,
}

/// Health and reflection are open to every fleet certificate.
fn is_standard_service(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

impl<S, B> tower::Service<http::Request<B>> for CallerCheck<S>
where
    S: tower::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        >,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future =
        futures::future::Either<std::future::Ready<Result<Self::Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Some(callers) = &self.callers else {
            return futures::future::Either::Right(self.inner.call(req));
        };
        let path = req.uri().path();
        if is_standard_service(path) {
            return futures::future::Either::Right(self.inner.call(req));
        }
        let method = path.rsplit('/').next().unwrap_or_default();
        let verdict = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs)
            .ok_or(Denied::NoCertificate)
            .and_then(|certs| {
                certs
                    .first()
                    .ok_or(Denied::NoCertificate)
                    .and_then(|leaf| callers.authorize(leaf, method))
            });
        match verdict {
            Ok(_) => futures::future::Either::Right(self.inner.call(req)),
            Err(denied) => {
                tracing::warn!(path, ?denied, "gRPC call refused: caller not allowed");
                metrics::counter!("shortfleet_grpc_calls_refused_total", "reason" => denied.label())
                    .increment(1);
                let status =
                    tonic::Status::permission_denied(format!("this caller may not call {method}"));
                futures::future::Either::Left(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Registers the HELP text and unit of the metrics this module records.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "shortfleet_grpc_calls_refused_total",
        metrics::Unit::Count,
        "gRPC calls refused because the caller is not allowed, by reason."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_lists_parse_names_and_methods() {
        let callers: Callers = "gateway, read-svc:GetLink|Resolve".parse().unwrap();
        assert_eq!(callers.0.len(), 2);
        assert_eq!(callers.0[0].methods, None);
        assert_eq!(
            callers.0[1].methods.as_deref(),
            Some(&["GetLink".to_owned(), "Resolve".to_owned()][..])
        );
        assert!("gate way".parse::<Callers>().is_err());
    }

    #[test]
    fn standard_services_are_recognised_by_path() {
        assert!(is_standard_service("/grpc.health.v1.Health/Check"));
        assert!(is_standard_service(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
        assert!(!is_standard_service("/shortener.v1.LinkWriter/GetLink"));
    }
}
