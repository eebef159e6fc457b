//! A private S3-compatible server (`s3s-fs`) for tests that stop and start the artifact store, so the outage
//! disturbs no other test. It listens on a free loopback port, keeps its objects in a temporary folder across
//! restarts, and accepts the suite's test credentials.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::env_or;

pub struct TestS3 {
    data: tempfile::TempDir,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    child: Option<Child>,
}

impl TestS3 {
    /// Start a server on a free port.
    pub fn start() -> TestS3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s3 = TestS3 {
            data: tempfile::tempdir().expect("tempdir"),
            port,
            child: None,
        };
        s3.up();
        s3
    }

    /// `S3_ENDPOINT` for the worker.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The configuration overrides that point a harness at this server.
    pub fn vars(&self) -> Vec<(String, String)> {
        vec![("S3_ENDPOINT".into(), self.endpoint())]
    }

    fn binary() -> PathBuf {
        let on_path = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("s3s-fs"))
                .find(|p| p.is_file())
        });
        on_path.unwrap_or_else(|| PathBuf::from("/root/.cargo/bin/s3s-fs"))
    }

    /// (Re)start the server on the same port and data; returns once it accepts connections.
    pub fn up(&mut self) {
        assert!(self.child.is_none(), "the test S3 server is already up");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("s3s-fs.log"))
            .expect("log file");
        let objects = self.data.path().join("objects");
        std::fs::create_dir_all(&objects).unwrap();
        let child = Command::new(Self::binary())
            .current_dir(&objects)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--access-key",
                &env_or("TBW_TEST_S3_ACCESS_KEY_ID", "tbw-test-access"),
            ])
            .args([
                "--secret-key",
                &env_or("TBW_TEST_S3_SECRET_ACCESS_KEY", "tbw-test-secret"),
            ])
            .arg(&objects)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("s3s-fs must be installed (scripts/services.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the test S3 server did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the server (connections are refused until [`TestS3::up`]).
    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        self.down();
    }
}
