//! `mock-upstream [--port N] [--host 127.0.0.1]`: the first line on stdout is
//! `listening on HOST:PORT` (port 0, the default, picks a free port). Runs until killed.

use std::io::Write;

const USAGE: &str =
    "usage: mock-upstream [--port N] [--host ADDR]   (defaults: --port 0 --host 127.0.0.1)";

fn main() {
    let mut host = "127.0.0.1".to_string();
    let mut port: u16 = 0;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => match args.next().map(|p| p.parse::<u16>()) {
                Some(Ok(p)) => port = p,
                _ => usage_error("--port needs a number 0..=65535"),
            },
            "--host" => match args.next() {
                Some(h) if !h.is_empty() => host = h,
                _ => usage_error("--host needs an address"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => usage_error(&format!("unknown argument {other:?}")),
        }
    }
    // A bare IPv6 address needs brackets in HOST:PORT.
    let bind = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    match mock_upstream::start(&bind) {
        Ok(server) => {
            println!("listening on {}", server.local_addr());
            let _ = std::io::stdout().flush();
            server.join();
        }
        Err(e) => {
            eprintln!("mock-upstream: cannot listen on {bind}: {e}");
            std::process::exit(1);
        }
    }
}

fn usage_error(msg: &str) -> ! {
    eprintln!("mock-upstream: {msg}\n{USAGE}");
    std::process::exit(2)
}
