//! What every fleet server exposes besides its own API: the standard gRPC
//! health service and server reflection.

use crate::helpers::{TestApp, expect_code, grpc_channel};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_serving_for_the_server_and_the_service() {
    let app = TestApp::spawn().await;
    crate::helpers::wait_until_serving(app.addr, "").await;
    crate::helpers::wait_until_serving(app.addr, "shortener.v1.LinkWriter").await;
    let mut health = HealthClient::new(grpc_channel(app.addr).await);
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await;
    expect_code(unknown, Code::NotFound);

    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_exactly_the_served_services() {
    let app = TestApp::spawn().await;
    let mut reflection = ServerReflectionClient::new(grpc_channel(app.addr).await);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection answers")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("a reflection response")
        .expect("the stream carries one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list, got {response:?}");
    };
    let mut names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    // Exactly what this server answers: not the other shortener.v1 services
    // that share its descriptor file.
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "shortener.v1.LinkWriter",
        ]
    );

    app.cleanup().await;
}
