//! `pispeaker`: the binary is a thin shell over the library so that tests can drive the same code.
fn main() -> std::process::ExitCode {
    pispeaker::cli::main()
}
