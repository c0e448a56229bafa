fn main() -> std::process::ExitCode {
    iotpipe::cli::main()
}
