//! The `portguard` binary; everything is in the `portguard_cli` library,
//! so that docgen reads the same clap definitions.

fn main() -> std::process::ExitCode {
    portguard_cli::main()
}
