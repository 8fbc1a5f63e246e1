fn main() {
    eprintln!("flash-helper: placeholder");
}
