// The blog's page in a real browser (Debian's Chromium, playwright-core)
// against `ticketing blog`: write a post, comment on it twice, and watch
// moderation remove the comment with a banned word while the other one
// stays. Screenshots go to $E2E_ARTIFACTS (default target/e2e-artifacts).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";
import { startServer } from "./server.mjs";

const artifacts = resolve(
  process.env.E2E_ARTIFACTS || join(import.meta.dirname, "..", "..", "target", "e2e-artifacts"),
);
mkdirSync(artifacts, { recursive: true });

let server;
let browser;

before(async () => {
  server = await startServer({ BLOG_BANNED_WORDS: "orange" }, ["blog", "run"]);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
  });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test("a reader writes a post and comments; moderation removes the banned one", async () => {
  const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("console", (m) => {
    if (m.type() === "error" && !/status of 400/.test(m.text())) errors.push(m.text());
  });

  await page.goto(server.base);
  await assert.doesNotReject(page.getByText("No posts yet.").waitFor());

  // An empty title is refused on the form itself, by the posts service.
  await page.getByLabel("Title").fill("   ");
  await page.getByRole("button", { name: "Publish" }).click();
  await page.getByText("Title is required").waitFor();

  await page.getByLabel("Title").fill("Fruit of the week");
  await page.getByRole("button", { name: "Publish" }).click();
  await page.getByText("Your post is published.").waitFor();
  const post = page.locator("li.post", { hasText: "Fruit of the week" });
  await post.waitFor();

  for (const text of ["An orange a day", "Bananas, obviously"]) {
    await post.getByLabel("Add a comment").fill(text);
    await post.getByRole("button", { name: "Comment" }).click();
    await page.getByText("Your comment is awaiting moderation.").waitFor();
  }

  // Moderation is asynchronous: reload until both verdicts are shown.
  const deadline = Date.now() + 15_000;
  for (;;) {
    await page.goto(server.base);
    const removed = await page.getByText("Removed by moderation").count();
    const pending = await page.getByText("awaiting moderation", { exact: true }).count();
    if (removed === 1 && pending === 0) break;
    assert.ok(Date.now() < deadline, `moderation never finished: ${removed} removed, ${pending} pending`);
    await new Promise((r) => setTimeout(r, 200));
  }
  const comments = page.locator("li.post", { hasText: "Fruit of the week" }).locator("li.comment");
  assert.equal(await comments.count(), 2);
  assert.match(await comments.nth(0).innerText(), /Removed by moderation/);
  assert.doesNotMatch(await comments.nth(0).innerText(), /orange/i);
  assert.equal((await comments.nth(1).innerText()).trim(), "Bananas, obviously");
  await page.screenshot({ path: join(artifacts, "blog.png"), fullPage: true });
  assert.deepEqual(errors, []);
  await context.close();
});
