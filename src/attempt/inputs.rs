//! The task's folders that go into every sandbox (`solution/`, `tests/`), each packed into a tar file in the job's
//! scratch folder the first time an attempt needs it and streamed from there by every attempt after.

use std::path::PathBuf;

use tokio::sync::OnceCell;

use crate::runtime::{PackedDir, RuntimeError, packed};
use crate::task::Task;

/// One job's packed task folders.
#[derive(Debug)]
pub struct TaskInputs {
    dir: PathBuf,
    solution: OnceCell<PackedDir>,
    tests: OnceCell<PackedDir>,
}

impl TaskInputs {
    /// Packed folders will be written into `dir` (a folder of the job's scratch).
    pub fn new(dir: impl Into<PathBuf>) -> TaskInputs {
        TaskInputs {
            dir: dir.into(),
            solution: OnceCell::new(),
            tests: OnceCell::new(),
        }
    }

    /// `solution/`, to land at `/solution`.
    pub async fn solution(&self, task: &Task) -> Result<&PackedDir, RuntimeError> {
        self.solution
            .get_or_try_init(|| async {
                let (source, tar) = (task.root.join("solution"), self.dir.join("solution.tar"));
                packed::pack(&source, "/solution", &tar).await
            })
            .await
    }

    /// `tests/`, to land at `/tests`.
    pub async fn tests(&self, task: &Task) -> Result<&PackedDir, RuntimeError> {
        self.tests
            .get_or_try_init(|| async {
                let (source, tar) = (task.root.join("tests"), self.dir.join("tests.tar"));
                packed::pack(&source, "/tests", &tar).await
            })
            .await
    }
}
