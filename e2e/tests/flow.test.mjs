// The buy-and-sell flow in a real browser: Debian's Chromium, driven by
// playwright-core, against the all-in-one binary (its web client at `/`).
//
// A seller signs up and lists tickets; a buyer signs up, finds one on the
// landing page, buys it, sees the countdown, is declined once, pays with a
// test token and sees the order complete; the ticket is no longer for sale;
// a second order left unpaid expires on screen and is cancelled. Screenshots
// of the key pages go to $E2E_ARTIFACTS (default target/e2e-artifacts).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join, resolve } from "node:path";
import { chromium } from "playwright-core";
import { startServer } from "./server.mjs";

const artifacts = resolve(
  process.env.E2E_ARTIFACTS || join(import.meta.dirname, "..", "..", "target", "e2e-artifacts"),
);
mkdirSync(artifacts, { recursive: true });

// How long an order holds its ticket here: long enough to pay by script,
// short enough to watch one expire.
const HOLD_SECONDS = 12;
// The admin of this server (granted with `ticketing users grant-admin`).
const ADMIN = "admin@example.com";

let server;
let browser;
const consoleErrors = [];

before(async () => {
  server = await startServer({
    ORDER_EXPIRATION_SECONDS: String(HOLD_SECONDS),
  });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

/// A person with a browser window of their own (cookies and all), phone-wide
/// or desktop-wide.
async function person(viewport = { width: 1024, height: 800 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.on("console", (m) => {
    // A form sent back with its errors has the API's status (400, 402, 403, 409):
    // the browser logs that; it is the page working, not failing.
    const expected = /Failed to load resource: the server responded with a status of (400|402|403|409)/;
    if (m.type() === "error" && !expected.test(m.text())) {
      consoleErrors.push(`${page.url()}: ${m.text()}`);
    }
  });
  page.on("pageerror", (e) => consoleErrors.push(`${page.url()}: ${e.message}`));
  return page;
}

const savedPages = [];

/// A screenshot of the page, and its HTML for the validator.
async function shot(page, name) {
  const path = join(artifacts, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  const html = join(artifacts, `${name}.html`);
  writeFileSync(html, await page.content());
  savedPages.push(html);
  return path;
}

/// Nothing sticks out sideways (a phone-wide window needs no sideways scroll).
async function assertFits(page) {
  const overflow = await page.evaluate(
    () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
  );
  assert.ok(overflow <= 0, `${page.url()} is ${overflow}px too wide`);
}

/// Every visible input and select has a label.
async function assertLabelled(page) {
  const unlabelled = await page.$$eval("input:not([type=hidden]), select, textarea", (els) =>
    els.filter((e) => !(e.labels && e.labels.length > 0)).map((e) => e.name || e.id),
  );
  assert.deepEqual(unlabelled, [], `inputs without a label on ${page.url()}`);
}

async function signUp(page, email, base = server.base) {
  await page.goto(base + "/");
  await page.getByRole("link", { name: "Sign up" }).click();
  await assertLabelled(page);
  await page.getByLabel("E-mail").fill(email);
  await page.getByLabel("Password").fill("correct horse battery");
  await page.getByRole("button", { name: "Sign up" }).click();
  await page.getByRole("link", { name: "Sell a ticket" }).waitFor();
}

async function sell(page, title, price) {
  await page.getByRole("link", { name: "Sell a ticket" }).click();
  await page.getByLabel("Title").fill(title);
  await page.getByLabel("Price (USD)").fill(price);
  await page.getByRole("button", { name: "List ticket" }).click();
  await page.getByRole("heading", { name: title }).waitFor();
  return page.url();
}

test("a seller lists, a buyer buys and pays, an unpaid order expires", async () => {
  const run = Date.now().toString(36);
  const concert = `Concert ${run}`;
  const unpaid = `Matinee ${run}`;

  // --- the seller
  const seller = await person();
  await signUp(seller, `seller-${run}@example.com`);
  await seller.getByRole("link", { name: "Sell a ticket" }).click();
  await assertLabelled(seller);
  // A mistake: the error shows next to its field, what was typed stays.
  await seller.getByLabel("Title").fill(concert);
  await seller.getByLabel("Price (USD)").fill("abc");
  await seller.getByRole("button", { name: "List ticket" }).click();
  await seller.locator("#price-error").waitFor();
  assert.match(await seller.locator("#price-error").innerText(), /price/i);
  assert.equal(await seller.getByLabel("Title").inputValue(), concert);
  assert.equal(await seller.getByLabel("Price (USD)").inputValue(), "abc");
  await shot(seller, "sell-form-error");
  await seller.getByLabel("Price (USD)").fill("25.50");
  await seller.getByRole("button", { name: "List ticket" }).click();
  await seller.getByRole("heading", { name: concert }).waitFor();
  assert.match(await seller.locator("main").innerText(), /\$25\.50/);
  assert.match(await seller.locator("main").innerText(), /For sale/);
  await seller.getByRole("link", { name: "Edit" }).waitFor();
  await sell(seller, unpaid, "10");

  // --- the buyer, on a phone-wide screen
  const buyer = await person({ width: 390, height: 844 });
  await signUp(buyer, `buyer-${run}@example.com`);
  await buyer.goto(server.base + "/");
  assert.equal(await buyer.title(), "Tickets for sale · ticketing");
  const landing = await shot(buyer, "landing");
  await assertFits(buyer);
  const listed = buyer.getByRole("listitem").filter({ hasText: concert });
  assert.match(await listed.innerText(), /\$25\.50/);
  await listed.getByRole("link", { name: concert }).click();
  // Buying works from the keyboard: tab to the button, press Enter.
  const purchase = buyer.getByRole("button", { name: "Purchase" });
  for (let i = 0; i < 20 && !(await purchase.evaluate((b) => b === document.activeElement)); i++) {
    await buyer.keyboard.press("Tab");
  }
  assert.ok(await purchase.evaluate((b) => b === document.activeElement), "Purchase is reachable by Tab");
  await buyer.keyboard.press("Enter");

  // The order page: amount, status, a running countdown.
  await buyer.getByRole("heading", { name: `Order for ${concert}` }).waitFor();
  assert.match(await buyer.locator("main").innerText(), /\$25\.50/);
  assert.equal(await buyer.locator("#order-status").innerText(), "Awaiting payment");
  const clock = buyer.locator("#countdown");
  const first = await clock.innerText();
  assert.match(first, /^\d+:\d\d$/);
  await buyer.waitForFunction(
    (before) => document.getElementById("countdown").textContent !== before,
    first,
    { timeout: 5000 },
  );
  assert.match(await buyer.locator("main").innerText(), /tok_visa/, "test tokens are documented");
  await assertLabelled(buyer);
  await assertFits(buyer);
  await shot(buyer, "order-countdown");

  // Declined first: the message is shown, the token kept.
  await buyer.getByLabel("Card token").fill("tok_chargeDeclined");
  await buyer.getByRole("button", { name: /^Pay/ }).click();
  await buyer.getByRole("alert").waitFor();
  assert.match(await buyer.getByRole("alert").innerText(), /declined/i);
  assert.equal(await buyer.getByLabel("Card token").inputValue(), "tok_chargeDeclined");
  // Then paid.
  await buyer.getByLabel("Card token").fill("tok_visa");
  await buyer.getByRole("button", { name: /^Pay/ }).click();
  await buyer.locator("#order-status", { hasText: "Paid" }).waitFor();
  assert.match(await buyer.locator("main").innerText(), /the ticket is yours/);
  await shot(buyer, "order-paid");

  // The ticket is no longer for sale.
  await buyer.goto(server.base + "/");
  assert.equal(await buyer.getByRole("link", { name: concert }).count(), 0);
  await buyer.getByRole("link", { name: unpaid }).waitFor();

  // --- a second order, left unpaid, expires on screen.
  await buyer.getByRole("link", { name: unpaid }).click();
  await buyer.getByRole("button", { name: "Purchase" }).click();
  await buyer.getByRole("heading", { name: `Order for ${unpaid}` }).waitFor();
  await buyer.locator("#countdown", { hasText: "expired" }).waitFor({
    timeout: (HOLD_SECONDS + 5) * 1000,
  });
  await shot(buyer, "order-expired");
  // The page reloads itself until the order is cancelled.
  await buyer.locator("#order-status", { hasText: "Cancelled" }).waitFor({ timeout: 30_000 });
  await shot(buyer, "order-cancelled");

  await buyer.getByRole("link", { name: "My orders", exact: true }).click();
  const rows = await buyer.locator("tbody tr").allInnerTexts();
  assert.ok(rows.some((r) => r.includes(concert) && r.includes("Paid")), rows.join("\n"));
  assert.ok(rows.some((r) => r.includes(unpaid) && r.includes("Cancelled")), rows.join("\n"));

  // The seller sees one sold and one for sale again.
  await seller.getByRole("link", { name: "My tickets" }).click();
  const mine = await seller.locator("tbody tr").allInnerTexts();
  assert.ok(mine.some((r) => r.includes(concert) && r.includes("Sold")), mine.join("\n"));
  assert.ok(mine.some((r) => r.includes(unpaid) && r.includes("For sale")), mine.join("\n"));
  await shot(seller, "my-tickets");

  // Signing out shows the signed-out header again.
  await seller.getByRole("button", { name: "Sign out", exact: true }).click();
  await seller.getByRole("link", { name: "Sign in" }).waitFor();

  // A screenshot is a real picture: a PNG of some size.
  const png = readFileSync(landing);
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  assert.ok(statSync(landing).size > 5000, "the landing screenshot is not blank");

  // Nothing the page did was blocked by its own CSP or failed.
  assert.deepEqual(consoleErrors, []);

  // Every page saved is valid HTML (the W3C's Nu validator; needs java).
  const vnu = createRequire(import.meta.url).resolve("vnu-jar/build/dist/vnu.jar");
  try {
    execFileSync("java", ["-jar", vnu, "--errors-only", ...savedPages], { stdio: "pipe" });
  } catch (e) {
    assert.fail(`invalid HTML:\n${e.stderr}${e.stdout}`);
  }
});

test("a payment whose verdict is still coming shows Processing… and turns to Paid by itself", {
  // It starts a server of its own, set to answer before the verdict.
  skip: process.env.E2E_URL ? "needs a server of its own (PAYMENT_WAIT_SECONDS=0)" : false,
}, async () => {
  // A server that answers every payment before the order's verdict (202).
  const quick = await startServer({ PAYMENT_WAIT_SECONDS: "0" });
  try {
    const run = Date.now().toString(36);
    const opera = `Opera ${run}`;
    const seller = await person();
    await signUp(seller, `seller2-${run}@example.com`, quick.base);
    await sell(seller, opera, "40");
    const buyer = await person();
    await signUp(buyer, `buyer2-${run}@example.com`, quick.base);
    await buyer.goto(quick.base + "/");
    await buyer.getByRole("link", { name: opera }).click();
    await buyer.getByRole("button", { name: "Purchase" }).click();
    await buyer.getByRole("heading", { name: `Order for ${opera}` }).waitFor();
    await buyer.getByLabel("Card token").fill("tok_visa");
    await buyer.getByRole("button", { name: /^Pay/ }).click();
    // The 202 path: the order page of the pending payment.
    await buyer.waitForURL(/\?payment=/);
    if ((await buyer.locator("#payment-processing").count()) > 0) {
      assert.match(await buyer.locator("#payment-processing").innerText(), /^Processing…/);
      assert.equal(await buyer.getByRole("button", { name: /^Pay/ }).count(), 0, "no second payment offered");
      await shot(buyer, "order-processing");
    }
    // No click: the page refreshes itself until the verdict is in.
    await buyer.locator("#order-status", { hasText: "Paid" }).waitFor({ timeout: 15_000 });
    assert.match(await buyer.locator("main").innerText(), /the ticket is yours/);
    assert.equal(await buyer.locator("#payment-processing").count(), 0);
  } finally {
    await quick.stop();
  }
});

async function signIn(page, email) {
  await page.goto(server.base + "/auth/signin");
  await page.getByLabel("E-mail").fill(email);
  await page.getByLabel("Password").fill("correct horse battery");
  await page.getByRole("button", { name: "Sign in" }).click();
}

/// Whether the page, loaded afresh, shows its visitor signed out.
async function signedOutOnReload(page) {
  await page.goto(server.base + "/");
  return (
    (await page.getByRole("link", { name: "Sign in" }).count()) === 1 &&
    (await page.getByText("Signed in as").count()) === 0
  );
}

test("an admin bans a user signed in elsewhere: their next page shows them signed out", async () => {
  const admin = await person();
  await signUp(admin, ADMIN);
  server.grantAdmin(ADMIN);
  await admin.reload();
  const victim = await person();
  await signUp(victim, "banned@example.com");
  await admin.getByRole("link", { name: "Users" }).click();
  await admin.getByLabel("E-mail contains").fill("banned@");
  await admin.getByRole("button", { name: "Search" }).click();
  await admin.getByRole("button", { name: "Ban banned@example.com" }).click();
  await admin.getByRole("button", { name: "Unban banned@example.com" }).waitFor();
  await shot(admin, "admin-users");
  await assertLabelled(admin);
  assert.ok(await signedOutOnReload(victim), "the banned user is signed out");
  // A banned user cannot sign back in…
  await signIn(victim, "banned@example.com");
  await victim.getByText("This account is banned").waitFor();
  // …until the ban is lifted.
  await admin.getByRole("button", { name: "Unban banned@example.com" }).click();
  await admin.getByRole("button", { name: "Ban banned@example.com" }).waitFor();
  await signIn(victim, "banned@example.com");
  await victim.getByText("Signed in as banned@example.com").waitFor();
  // Someone who is not an admin has no users page.
  assert.equal(await victim.getByRole("link", { name: "Users" }).count(), 0);
  const res = await victim.goto(server.base + "/admin/users");
  assert.equal(res.status(), 403);
  await admin.context().close();
  await victim.context().close();
});

test("signing out everywhere ends the sessions of every browser of the user", async () => {
  const laptop = await person();
  await signUp(laptop, "two-browsers@example.com");
  const phone = await person({ width: 390, height: 800 });
  await signIn(phone, "two-browsers@example.com");
  await phone.getByText("Signed in as two-browsers@example.com").waitFor();
  await laptop.getByRole("button", { name: "Sign out everywhere" }).click();
  await laptop.getByRole("link", { name: "Sign in" }).waitFor();
  assert.ok(await signedOutOnReload(phone), "the other browser is signed out too");
  await laptop.context().close();
  await phone.context().close();
});

test("changing the password signs the user out of every other browser", async () => {
  const laptop = await person();
  await signUp(laptop, "new-password@example.com");
  const phone = await person({ width: 390, height: 800 });
  await signIn(phone, "new-password@example.com");
  await phone.getByText("Signed in as new-password@example.com").waitFor();
  await laptop.getByRole("link", { name: "Account" }).click();
  await assertLabelled(laptop);
  // A wrong current password is said next to its field; nothing changes.
  await laptop.getByLabel("Current password").fill("not the password");
  await laptop.getByLabel("New password").fill("another horse battery");
  await laptop.getByRole("button", { name: "Change password" }).click();
  await laptop.getByText("Current password is incorrect").waitFor();
  await laptop.getByLabel("Current password").fill("correct horse battery");
  await laptop.getByLabel("New password").fill("another horse battery");
  await laptop.getByRole("button", { name: "Change password" }).click();
  await laptop.getByText("Your password is changed").waitFor();
  await shot(laptop, "account");
  // This browser stays signed in; the other one is signed out.
  await laptop.reload();
  await laptop.getByText("Signed in as new-password@example.com").waitFor();
  assert.ok(await signedOutOnReload(phone), "the other browser is signed out");
  await laptop.context().close();
  await phone.context().close();
});

test("pages are protected: security headers, CSRF, no caching of pages", async () => {
  const res = await fetch(server.base + "/");
  const csp = res.headers.get("content-security-policy");
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline/);
  assert.equal(res.headers.get("x-content-type-options"), "nosniff");
  assert.equal(res.headers.get("x-frame-options"), "DENY");
  assert.equal(res.headers.get("referrer-policy"), "same-origin");
  assert.equal(res.headers.get("cache-control"), "no-store");
  const html = await res.text();
  const css = html.match(/href="(\/assets\/app\.css\?v=[0-9a-f]+)"/)[1];
  const asset = await fetch(server.base + css);
  assert.equal(asset.headers.get("cache-control"), "public, max-age=31536000, immutable");
  assert.match(asset.headers.get("content-type"), /text\/css/);

  // A form posted without the page's token is refused.
  const forged = await fetch(server.base + "/tickets/new", {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    body: "title=x&price=1",
    redirect: "manual",
  });
  assert.equal(forged.status, 403);
  // Unknown pages are an HTML 404; unknown API routes stay JSON.
  const page = await fetch(server.base + "/no/such/page");
  assert.equal(page.status, 404);
  assert.match(page.headers.get("content-type"), /text\/html/);
  const api = await fetch(server.base + "/api/no-such-route");
  assert.equal(api.status, 404);
  assert.deepEqual(await api.json(), { errors: [{ message: "Not found" }] });
});

test("the API description renders in Swagger UI from local assets", async () => {
  const page = await person();
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  await page.goto(server.base + "/api/docs");
  await page.locator(".opblock-summary-path", { hasText: "/api/tickets/{id}" }).first().waitFor();
  assert.ok((await page.locator(".opblock").count()) >= 20, "every operation is listed");
  await shot(page, "api-docs");
  const foreign = requests.filter((u) => !u.startsWith(server.base) && !u.startsWith("data:"));
  assert.deepEqual(foreign, [], "nothing is loaded from another origin");
  assert.deepEqual(consoleErrors, []);
});
