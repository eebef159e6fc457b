//! A private PostgreSQL server for tests that stop and start the database.

use std::path::PathBuf;
use std::process::{Command, Stdio};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL server of one test's own (initdb into a temporary folder, on a free port), so stopping and starting
/// it disturbs no other test. Removed on drop.
pub struct PrivatePostgres {
    dir: PathBuf,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

fn as_postgres(args: &str) -> std::process::ExitStatus {
    Command::new("su")
        .args(["postgres", "-s", "/bin/sh", "-c", args])
        .stdout(Stdio::null())
        .status()
        .unwrap()
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = PathBuf::from(format!("/var/tmp/tbw-pg-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(
            Command::new("chown")
                .args(["postgres:postgres", dir.to_str().unwrap()])
                .status()
                .unwrap()
                .success()
        );
        assert!(
            as_postgres(&format!(
                "{PG_BIN}/initdb -A trust -U postgres -D {}/data",
                dir.display()
            ))
            .success()
        );
        let pg = PrivatePostgres { dir, port };
        pg.up();
        pg
    }

    fn ctl(&self, what: &str) -> bool {
        as_postgres(&format!(
            "{PG_BIN}/pg_ctl -D {dir}/data -l {dir}/log -w -t 30 -o '-p {port} -k {dir} -c listen_addresses=127.0.0.1' {what}",
            dir = self.dir.display(),
            port = self.port
        ))
        .success()
    }

    pub fn up(&self) {
        assert!(self.ctl("start"), "private PostgreSQL did not start");
    }

    pub fn down(&self) {
        assert!(self.ctl("-m fast stop"), "private PostgreSQL did not stop");
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.ctl("-m immediate stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
