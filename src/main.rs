fn main() -> std::process::ExitCode {
    iotpipe::cli::main()
}

/// mimalloc: the message path allocates small, short-lived buffers on
/// several threads; glibc malloc's arena contention showed up as ~20% of
/// the bridge's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
