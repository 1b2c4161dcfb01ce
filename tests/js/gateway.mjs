// A real `sitebuilder-gateway serve --demo` for the client's tests: started, killed
// (SIGKILL) and started again on the same port, on the database tests/test_js_client.py
// prepared (its SITEBUILDER_* variables are in our environment).

import { spawn, execFile } from "node:child_process";
import { once } from "node:events";
import { promisify } from "node:util";

const LISTENING = /listening on ws:\/\/127\.0\.0\.1:(\d+)\//;
const START_TIMEOUT_MS = 60_000;

export class Gateway {
  constructor() {
    this.port = 0;
    this.process = null;
    this.log = "";
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}/`;
  }

  get httpUrl() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    const child = spawn(
      process.env.SB_PYTHON,
      ["-m", "gateway.app.cli", "serve", "--demo", "--port", String(this.port)],
      { cwd: process.env.SB_REPO, env: process.env, stdio: ["ignore", "ignore", "pipe"] },
    );
    this.process = child;
    const listening = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`serve did not listen:\n${this.log}`)), START_TIMEOUT_MS);
      child.stderr.setEncoding("utf8");
      child.stderr.on("data", (text) => {
        this.log += text;
        const match = LISTENING.exec(this.log);
        if (match) {
          clearTimeout(timer);
          resolve(Number(match[1]));
        }
      });
      child.on("exit", (code) => reject(new Error(`serve exited ${code}:\n${this.log}`)));
    });
    this.port = await listening;
    this.log = "";
  }

  async kill() {
    if (!this.process || this.process.exitCode !== null) return;
    const exited = once(this.process, "exit");
    this.process.kill("SIGKILL");
    await exited;
    this.process = null;
  }

  /** A demo user's token fetcher that counts its calls. */
  tokens(user, ttl) {
    const getToken = async () => {
      getToken.calls += 1;
      const query = ttl ? `&ttl=${ttl}` : "";
      const reply = await fetch(`${this.httpUrl}/demo/token?user=${user}${query}`);
      if (!reply.ok) throw new Error(`token: HTTP ${reply.status}`);
      const body = await reply.json();
      getToken.last = body;
      notify();
      return body.token;
    };
    getToken.calls = 0;
    return getToken;
  }

  async demo() {
    return (await fetch(`${this.httpUrl}/demo/users`)).json();
  }
}

/** Run SQL with psql on the test's database, as an operator would while we are down. */
export async function psql(sql) {
  await promisify(execFile)(process.env.SB_PSQL, [process.env.SB_DSN, "-v", "ON_ERROR_STOP=1", "-qc", sql], {
    timeout: 30_000,
  });
}

/** Resolves when `predicate()` holds, checked on each `notify`; rejects after timeoutMs. */
export function waitFor(predicate, timeoutMs = 20_000, what = "condition") {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), timeoutMs);
    const check = () => {
      if (predicate()) {
        clearTimeout(timer);
        waiters.delete(check);
        resolve();
      }
    };
    waiters.add(check);
    check();
  });
}

const waiters = new Set();

/** Re-check every pending waitFor (call it from event callbacks). */
export function notify() {
  for (const check of [...waiters]) check();
}
