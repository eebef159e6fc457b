// pm2 process file for the worker daemon: `pm2 start ecosystem.config.js`.
// Configuration (DATABASE_URL, S3_*, OPENAI_*, limits, ...) comes from `.env.local` in this
// folder (or its parent), which the worker reads itself; see `.env.example`. Build first with
// `cargo build --release`.
module.exports = {
  apps: [
    {
      name: "terminal-bench-worker",
      script: "./target/release/terminal-bench-worker",
      args: "worker",
      cwd: __dirname,
      interpreter: "none",
      autorestart: true,
      // SIGINT first, then SIGKILL after 40 s: the worker's graceful shutdown takes up to 30 s.
      kill_timeout: 40000,
      max_restarts: 10,
      min_uptime: 10000,
      restart_delay: 2000,
      env: {
        LOG_LEVEL: "info",
      },
    },
  ],
};
