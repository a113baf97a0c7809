//! `shoal-node`: the Linux host node.

fn main() {
    eprintln!("shoal-node: not built yet");
    std::process::exit(2);
}
