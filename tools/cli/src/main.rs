//! `shoal`: the operator CLI.

fn main() {
    eprintln!("shoal: not built yet");
    std::process::exit(2);
}
