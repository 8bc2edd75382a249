//! The `deadline-notifier` binary; everything it does is in [`deadline_notifier::cli`].
fn main() -> std::process::ExitCode {
    deadline_notifier::cli::main()
}
