// Audit log (admin): filter, and export the same rows as CSV.
import { api } from "./api.js";
import { $, el, showError } from "./ui.js";

export function init() {
  $("audit-form").addEventListener("submit", (e) => { e.preventDefault(); load().catch(showError); });
  $("audit-csv").addEventListener("click", () => exportCsv().catch(showError));
}

export async function enter() { await load(); }

function filters() {
  const since = $("audit-since").value;
  return { operation: $("audit-op").value, label: $("audit-label").value, key_id: $("audit-key").value,
           since: since ? new Date(since).toISOString() : "", limit: $("audit-limit").value };
}

async function load() {
  const out = await api("/v1/audit", { query: filters() });
  $("audit-table").tBodies[0].replaceChildren(...out.rows.map((r) => el("tr", {},
    el("td", { text: r.time.replace("T", " ").slice(0, 19) }), el("td", { text: r.key_id || "–" }),
    el("td", { text: r.operation }), el("td", { text: r.labels.join(", ") }), el("td", { text: r.decision }),
    el("td", { text: r.status }))));
}

async function exportCsv() {
  const response = await api("/v1/audit/export", { query: filters(), raw: true });
  const url = URL.createObjectURL(await response.blob());
  const link = el("a", { href: url, download: "megaclass-audit.csv" });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
