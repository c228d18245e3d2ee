//! Generated types for `shortener.v1`: the gRPC services every Shortfleet
//! service implements or calls, and the protobuf events carried on RabbitMQ.
//!
//! Nothing here holds logic; it is the contract shared by the fleet (and
//! [`raw`], one way of reading it).

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("shortener.v1");
    include!(concat!(env!("OUT_DIR"), "/clients/shortener.v1.rs"));

    /// Encoded `FileDescriptorSet` for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/shortener_descriptor.bin"));
}

pub mod codec;
pub mod raw;

pub use prost;
pub use prost_types;
