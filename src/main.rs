//! The `portcullis` command: everything is in [`portcullis::cli`].

fn main() -> std::process::ExitCode {
    portcullis::cli::main()
}
