//! Compiles `proto/control.proto`, `proto/pool.proto` and `proto/alloc.proto` with protox (pure
//! Rust: no `protoc` needed) and generates the prost types into `OUT_DIR/corelane.control.rs`
//! (included by `src/control/proto.rs`), `OUT_DIR/corelane.pool.rs` (by `src/pool/proto.rs`)
//! and `OUT_DIR/corelane.alloc.rs` (by `src/alloc/proto.rs`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        ["proto/control.proto", "proto/pool.proto", "proto/alloc.proto", "proto/frames.proto"],
        ["proto"],
    )?;
    prost_build::Config::new().compile_fds(fds)?;
    Ok(())
}
