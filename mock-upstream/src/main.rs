//! `mock-upstream [--port N] [--host 127.0.0.1]`: prints `listening on HOST:PORT` first.

use std::io::Write;

fn main() {
    let mut host = "127.0.0.1".to_string();
    let mut port = "0".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().unwrap_or_else(|| usage()),
            "--host" => host = args.next().unwrap_or_else(|| usage()),
            _ => usage(),
        }
    }
    match mock_upstream::start(&format!("{host}:{port}")) {
        Ok(server) => {
            println!("listening on {host}:{}", server.port());
            let _ = std::io::stdout().flush();
            server.join();
        }
        Err(e) => {
            eprintln!("mock-upstream: cannot listen on {host}:{port}: {e}");
            std::process::exit(1);
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: mock-upstream [--port N] [--host ADDR]");
    std::process::exit(2)
}
