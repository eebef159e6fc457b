// pm2 process file for the worker daemon. Build first (`cargo build --release`), then `pm2 start ecosystem.config.js`
// (or `pm2 start ecosystem.config.js --env production`). Configuration (DATABASE_URL, S3_*, OPENAI_*, limits, ...)
// comes from `.env.local` in this folder (or its parent), which the worker reads itself, or from the environment pm2
// is started in; see `.env.example`. Variables set here and in the shell win over `.env.local`.
//
// Overridable from the shell that runs `pm2 start` (the tests use them):
//   TBW_BINARY              the worker binary (default ./target/release/terminal-bench-worker)
//   TBW_MAX_MEMORY_RESTART  pm2's memory limit (default 2G)
//   WORKER_SHUTDOWN_GRACE_SECS  also sizes kill_timeout below
const fs = require("fs");
const path = require("path");

// pm2 would create it too, with a warning on every start.
fs.mkdirSync(path.join(__dirname, "logs"), { recursive: true });

// The worker's longest shutdown after pm2's SIGINT (src/poller.rs `drain`, src/main.rs):
//   grace         running jobs may finish           WORKER_SHUTDOWN_GRACE_SECS (30 s)
//   hard stop     stopping attempts, containers      at most 60 s
//   release       unfinished jobs back to `queued`   a few database writes and container removals (allow 15 s)
//   background    listener/lease/sweep loops end     at most about one lease (WORKER_LEASE_SECS, 15 s)
//   trace flush   OTLP exporter shutdown             at most 10 s
// = grace + 100 s. pm2 sends SIGKILL after kill_timeout; killing earlier would leave jobs `running` until their
// lease expires and another worker rescues them.
const graceSecs = Number(process.env.WORKER_SHUTDOWN_GRACE_SECS || 30);
const killTimeoutMs = (graceSecs + 100) * 1000;

// pm2 prefixes each line with its time; JSON lines carry their own `timestamp` and must stay one object per line.
const json = process.env.LOG_FORMAT === "json";

module.exports = {
  apps: [
    {
      name: "terminal-bench-worker",
      script: process.env.TBW_BINARY || "./target/release/terminal-bench-worker",
      args: "worker",
      cwd: __dirname,
      interpreter: "none",
      // The worker writes info lines to stdout and warnings and errors to stderr.
      out_file: "logs/worker-out.log",
      error_file: "logs/worker-error.log",
      merge_logs: true,
      // Like `time: true` (which would override the format) with milliseconds.
      ...(json ? {} : { log_date_format: "YYYY-MM-DDTHH:mm:ss.SSSZ" }),
      autorestart: true,
      max_memory_restart: process.env.TBW_MAX_MEMORY_RESTART || "2G",
      // Crash loops back off: 1 s, 1.5 s, 2.25 s, ... up to 15 s; the delay resets after 30 s of uptime.
      exp_backoff_restart_delay: 1000,
      max_restarts: 10,
      min_uptime: 10000,
      // SIGINT first (the worker drains), SIGKILL only after the whole shutdown above.
      kill_timeout: killTimeoutMs,
      // PostgreSQL's notices ("relation ... already exists, skipping" on every start) are not worth a line.
      env: {
        LOG_LEVEL: process.env.LOG_LEVEL || "info,sqlx::postgres::notice=warn",
        RUST_BACKTRACE: "1",
      },
      env_production: {
        LOG_LEVEL: process.env.LOG_LEVEL || "info,sqlx::postgres::notice=warn",
        RUST_BACKTRACE: "1",
      },
    },
  ],
};
