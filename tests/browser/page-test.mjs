// Drives attune's web page in headless Chromium (playwright-core with the system's Chromium):
// opens it, runs a query, sees both columns, filters, marks a judgment, evaluates it, reads the
// report tab, and takes a screenshot.
//
//   node page-test.mjs --url http://127.0.0.1:8080 --collection demo --query "boots for wide feet" \
//       [--screenshot page.png] [--chromium /usr/bin/chromium]
//
// Exits 0 when every check passed, 1 with the failed check otherwise.
import { chromium } from "playwright-core";

function options(argv) {
  const out = { chromium: process.env.CHROMIUM || "/usr/bin/chromium" };
  for (let i = 2; i < argv.length; i += 2) out[argv[i].replace(/^--/, "")] = argv[i + 1];
  for (const required of ["url", "collection", "query"]) {
    if (!out[required]) throw new Error(`--${required} is required`);
  }
  return out;
}

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
  console.log(`ok: ${message}`);
}

const opts = options(process.argv);
const browser = await chromium.launch({
  executablePath: opts.chromium,
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const pageErrors = [];
  page.on("pageerror", (error) => pageErrors.push(error.message));
  const external = [];
  page.on("request", (request) => {
    if (!request.url().startsWith(opts.url) && !request.url().startsWith("data:") && !request.url().startsWith("blob:")) {
      external.push(request.url());
    }
  });

  await page.goto(`${opts.url}/?collection=${encodeURIComponent(opts.collection)}`);
  await page.waitForFunction(() => document.querySelectorAll("#filters select").length > 0, null, { timeout: 15000 });
  check(await page.locator("#collection").inputValue() === opts.collection, `collection ${opts.collection} is selected`);
  const filterCount = await page.locator("#filters select").count();
  check(filterCount > 0, `metadata filters are offered (${filterCount})`);

  // A query: both columns fill.
  await page.fill("#query", opts.query);
  await page.click("#search-button");
  await page.waitForSelector("#results-to li.result", { timeout: 15000 });
  const fromCount = await page.locator("#results-from li.result").count();
  const toCount = await page.locator("#results-to li.result").count();
  check(fromCount > 0 && toCount > 0, `both columns show results (${fromCount} and ${toCount})`);
  const titles = await page.locator("#title-from").textContent() + " | " + await page.locator("#title-to").textContent();
  check(titles.includes("base") && titles.includes("tuned"), `columns are base and tuned (${titles})`);
  const summary = await page.locator("#summary").textContent();
  check(/overlap@\d+/.test(summary), `the comparison summary is shown (${summary})`);
  const badges = await page.locator("#results-to .move").count();
  check(badges === toCount, `every tuned result carries its rank move (${badges})`);

  // A filter: every result then has the chosen value.
  const field = "category";
  const select = page.locator(`#filters select[data-field="${field}"]`);
  if (await select.count()) {
    const value = await select.locator("option").nth(1).getAttribute("value");
    await select.selectOption(value);
    await page.waitForFunction(
      ([f, v]) => {
        const items = [...document.querySelectorAll("#results-to li.result")];
        return items.length > 0 && items.every((li) => li.textContent.includes(`${f}: ${v}`));
      },
      [field, JSON.parse(value)],
      { timeout: 15000 },
    );
    check(true, `filter ${field} = ${value} applies to the results`);
    await select.selectOption("");
    await page.waitForFunction(
      ([f, v]) => [...document.querySelectorAll("#results-to li.result")].some((li) => !li.textContent.includes(`${f}: ${v}`)),
      [field, JSON.parse(value)],
      { timeout: 15000 },
    );
  }

  // Judge mode: mark the first tuned result relevant.
  await page.check("#judge-mode");
  const first = page.locator("#results-to li.result").first();
  const judgedId = await first.getAttribute("data-id");
  await first.locator('.judge button[data-grade="2"]').click();
  await page.waitForFunction(() => document.querySelector("#judgment-count").textContent === "1");
  check(true, `document ${judgedId} is judged relevant (1 judgment saved)`);
  const selected = await page.locator(`li.result[data-id="${judgedId}"] .judge button.selected[data-grade="2"]`).count();
  check(selected >= 1, "the judgment shows on the result");
  const saved = await page.evaluate((c) => localStorage.getItem(`attune.judgments.${c}`), opts.collection);
  check(saved && saved.includes(judgedId), "the judgment is saved in the browser");

  // Evaluate the judgment through the API.
  await page.click('.tab[data-tab="judgments"]');
  await page.click("#evaluate");
  await page.waitForSelector("#evaluation-metrics", { timeout: 15000 });
  const evaluation = await page.locator("#evaluation-metrics").textContent();
  check(/ndcg@10/i.test(evaluation) && evaluation.includes("base") && evaluation.includes("tuned"),
    "the evaluation shows nDCG@10 for base and tuned");

  // The report tab shows the pipeline's verdict and the plots.
  await page.click('.tab[data-tab="report"]');
  await page.waitForSelector("#report-summary .verdict", { timeout: 15000 });
  const verdict = await page.locator("#report-summary .verdict").textContent();
  check(/promoted/.test(verdict), `the report's verdict is shown (${verdict.slice(0, 80)}…)`);
  const plots = await page.frameLocator("#report-frame").locator("svg").count();
  check(plots > 0, `the report's plots render (${plots} SVG)`);
  // Query drift per vector space, from GET /v1/collections/{c}/drift: every space is listed,
  // with its reference and window (compare, used above, is not counted as served traffic).
  await page.waitForSelector("#drift-summary table", { timeout: 15000 });
  const driftRows = await page.locator("#drift-summary tbody tr").allTextContents();
  check(driftRows.some((r) => r.startsWith("base")) && driftRows.some((r) => r.startsWith("tuned")),
    `the report tab shows query drift per space (${driftRows.join(" | ")})`);

  check(pageErrors.length === 0, `no script errors (${pageErrors.join("; ")})`);
  check(external.length === 0, `no request leaves the server (${external.join(", ")})`);

  if (opts.screenshot) {
    await page.click('.tab[data-tab="search"]');
    await page.uncheck("#judge-mode");
    await page.screenshot({ path: opts.screenshot, fullPage: false });
    console.log(`screenshot: ${opts.screenshot}`);
  }
} catch (error) {
  failed = true;
  console.error(error.message);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
