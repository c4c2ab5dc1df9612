fn main() {
    eprintln!("fga-dataplane: the HTTP server is not implemented yet; see the README");
    std::process::exit(2);
}
