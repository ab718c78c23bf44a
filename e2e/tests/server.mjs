// Starts the all-in-one `ticketing` binary on a free port with a fresh data
// directory, and stops it; or, with E2E_URL, uses a deployment that is
// already running (the compose stack that e2e/compose starts), whose admins
// are granted by the command in E2E_GRANT_ADMIN (a JSON array; the e-mail is
// appended).
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const repo = resolve(import.meta.dirname, "..", "..");

export function binary() {
  return process.env.TICKETING_BIN || join(repo, "target", "debug", "ticketing");
}

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
    s.on("error", fail);
  });
}

// `command` is the binary's command: `["run"]` for the marketplace,
// `["blog", "run"]` for the blog.
export async function startServer(env = {}, command = ["run"]) {
  if (process.env.E2E_URL) return running(process.env.E2E_URL);
  const port = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), "ticketing-e2e-"));
  const child = spawn(binary(), [...command, "--port", String(port), "--data-dir", dataDir], {
    env: { ...process.env, COOKIE_SECURE: "false", RUST_LOG: "warn", ...env },
    stdio: ["ignore", "inherit", "inherit"],
  });
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      const res = await fetch(`${base}/readyz`);
      if (res.ok) break;
    } catch {
      // not listening yet
    }
    if (child.exitCode !== null) throw new Error(`ticketing exited with ${child.exitCode}`);
    if (Date.now() > deadline) throw new Error(`ticketing at ${base} never became ready`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    base,
    // Makes the account with this e-mail an admin, as an operator does.
    grantAdmin(email) {
      execFileSync(binary(), ["users", "grant-admin", email, "--data-dir", dataDir], {
        env: { ...process.env, RUST_LOG: "warn", ...env },
        stdio: ["ignore", "ignore", "inherit"],
      });
    },
    async stop() {
      child.kill("SIGTERM");
      await new Promise((r) => (child.exitCode !== null ? r() : child.once("exit", r)));
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

// A deployment started elsewhere: nothing to start or stop.
function running(base) {
  const [grant, ...args] = JSON.parse(process.env.E2E_GRANT_ADMIN || "[]");
  return {
    base,
    grantAdmin(email) {
      if (!grant) throw new Error("E2E_GRANT_ADMIN is not set");
      execFileSync(grant, [...args, email], { stdio: ["ignore", "ignore", "inherit"] });
    },
    async stop() {},
  };
}
