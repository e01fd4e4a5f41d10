// Gallery: counts, model, index and recall, threshold and its calibration; classes; calibrate.
import { api, formOf } from "./api.js";
import { $, clearFlash, el, files, flash, pct, resetFiles, showError } from "./ui.js";

const PAGE = 25;
let offset = 0;
let total = 0;

export function init() {
  $("classes-form").addEventListener("submit", (e) => { e.preventDefault(); offset = 0; loadClasses().catch(showError); });
  $("classes-prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); loadClasses().catch(showError); });
  $("classes-next").addEventListener("click", () => { offset += PAGE; loadClasses().catch(showError); });
  $("calibrate-form").addEventListener("submit", (e) => { e.preventDefault(); calibrate().catch(showError); });
}

export async function enter() {
  await Promise.all([loadStats(), loadClasses()]);
}

function bytes(n) {
  if (n === undefined || n === null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// the index's recall@1 against exact search as the gallery measured it (tuning probes, and the
// live monitor of sampled searches when it runs), with 95 % intervals when given
function recallText(s) {
  const ci = (c) => (c ? ` (95 % CI ${c[0]}–${c[1]})` : "");
  let text = s.index && s.index.startsWith("Flat") ? "exact search (recall 1.0)" : "recall not measured yet";
  if (s.recall_at_1 !== undefined && s.tuned_by !== "exact") {
    text = `recall@1 ${s.recall_at_1}${ci(s.recall_ci95)} vs exact search`
      + (s.recall_queries ? ` on ${s.recall_queries.toLocaleString()} probes` : "") + (s.tuned_by ? `, tuned by ${s.tuned_by}` : "");
  }
  if (s.live_recall_samples && s.live_recall_at_1 !== undefined) {
    text += `; live recall@1 ${s.live_recall_at_1}${ci(s.live_recall_ci95)} over ${s.live_recall_samples.toLocaleString()} sampled searches`;
  }
  return text;
}

async function loadStats() {
  const s = await api("/v1/stats");
  const cal = s.calibration;
  const threshold = s.calibrated
    ? `${s.threshold.toFixed(4)}` + (cal ? ` — calibrated for FPIR ${cal.target_fpir} (achieved ${pct(cal.achieved_fpir)}, 95 % CI ${pct(cal.fpir_ci95[0])}–${pct(cal.fpir_ci95[1])}, ${cal.n_non_mated.toLocaleString()} non-mated searches)` : "")
    : "not calibrated: identify and verify give candidates only";
  const recall = recallText(s);
  const rows = [
    ["classes", s.classes.toLocaleString()], ["templates", s.templates.toLocaleString()],
    ["dimension", s.dim], ["templates per class", s.templates_mode],
    ["model fingerprint", s.model], ["index", `${s.index} — ${recall}`],
    ["threshold", threshold], ["encrypted", s.encrypted ? "yes" : "no"], ["disk", bytes(s.disk_bytes)],
  ];
  $("gallery-stats").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v), "data-field": k })]));
}

async function loadClasses() {
  const out = await api("/v1/classes", { query: { offset, limit: PAGE, q: $("classes-q").value, detail: true } });
  total = out.total;
  const rows = out.items.map((c) => el("tr", {}, el("td", { text: c.label }), el("td", { text: c.templates }),
                                       el("td", { text: c.samples ?? "–" }), el("td", { text: c.thumbnails })));
  $("classes-table").tBodies[0].replaceChildren(...rows);
  const last = Math.min(offset + PAGE, total);
  $("classes-page").textContent = total ? `${offset + 1}–${last} of ${total.toLocaleString()}` : "no classes";
  $("classes-prev").disabled = offset === 0;
  $("classes-next").disabled = last >= total;
}

async function calibrate() {
  const chosen = files("calibrate-files");
  if (!chosen.length) { flash("Choose or drop non-mated photos.", "error"); return; }
  clearFlash();
  const out = await api("/v1/calibrate", { method: "POST", form: formOf({
    files: chosen, target_fpir: $("calibrate-fpir").value, allow_few: $("calibrate-few").checked,
  }) });
  flash(`Threshold ${out.threshold.toFixed(4)} for FPIR ${out.target_fpir} from ${out.n_non_mated} non-mated photos.`
        + (out.warning ? ` Warning: ${out.warning}` : ""), out.warning ? "warn" : "ok");
  resetFiles("calibrate-files");
  await loadStats();
}
