//! Compiles `shortener/v1/shortener.proto` with protox (pure Rust), so the
//! build never needs a system `protoc`. The encoded descriptor set is kept for
//! gRPC server reflection.
use prost::Message;
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "shortener/v1/shortener.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["."])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("shortener_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    // Messages and servers (with the server codec, see src/codec.rs) ...
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::codec::RequestCodec")
        .compile_fds(descriptors.clone())?;
    // ... then clients alone, over the same message types, with prost's own
    // codec, into their own directory.
    let clients = out_dir.join("clients");
    std::fs::create_dir_all(&clients)?;
    tonic_prost_build::configure()
        .build_server(false)
        .extern_path(".shortener.v1", "crate::v1")
        .out_dir(&clients)
        .compile_fds(descriptors)?;
    Ok(())
}
