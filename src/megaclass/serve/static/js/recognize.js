// Identify (1:N) and Verify (1:1): candidates with thumbnails, scores against the threshold line.
import { api, formOf } from "./api.js";
import { $, clearFlash, el, files, flash, showError } from "./ui.js";

let stats = null;

export function init() {
  $("identify-form").addEventListener("submit", (e) => { e.preventDefault(); identify().catch(showError); });
  $("verify-form").addEventListener("submit", (e) => { e.preventDefault(); verify().catch(showError); });
}

export async function enter() {
  stats = await api("/v1/stats");
  const cohort = (stats.decision || "").startsWith("cohort:") ? stats.decision.slice(7) : null;
  const note = stats.calibrated
    ? `Threshold ${stats.threshold.toFixed(4)}` + (stats.calibration ? ` (calibrated for FPIR ${stats.calibration.target_fpir})` : "")
      + (cohort ? ` on the cohort rule: the best score minus the mean score of the next ${cohort} classes` : "")
    : "This gallery is not calibrated: candidates are shown without an accept/reject decision (calibrate it on the Gallery page).";
  $("identify-note").textContent = note;
}

// the query parameters that choose the decision threshold
const thresholdQuery = () => (stats && stats.calibrated ? {} : { no_threshold: true });

function scoreBar(score, threshold) {
  const clamp = (x) => Math.max(0, Math.min(1, x));
  const below = threshold !== null && score < threshold;
  return el("div", { class: "bar", title: `score ${score.toFixed(4)}` },
    el("div", { class: `fill${below ? " below" : ""}`, style: { width: `${100 * clamp(score)}%` } }),
    threshold === null ? null : el("div", { class: "thr", title: `threshold ${threshold.toFixed(4)}`,
                                            style: { left: `${100 * clamp(threshold)}%` } }));
}

function candidateRow(rank, match, threshold) {
  const thumb = match.thumbnail
    ? el("img", { class: "thumb", src: match.thumbnail, alt: `enrolled image of ${match.label}` })
    : el("span", { class: "thumb none", title: "no thumbnail retained" });
  return el("li", { class: "cand" }, el("span", { text: `${rank}.` }), thumb,
            el("span", { class: "label", text: match.label, title: match.label }),
            scoreBar(match.score, threshold), el("span", { class: "score", text: match.score.toFixed(4) }));
}

// under a cohort rule the threshold applies to the statistic, not to the cosine bars
const lineFor = (statistic, threshold) => (statistic === undefined || statistic === null ? threshold : null);

function decisionText(result, threshold) {
  if (!result.candidates.length) return ["The gallery is empty.", "unknown"];
  if (threshold === null) return [`Best candidate: ${result.candidates[0].label} (no threshold: no decision)`, "known"];
  const stat = result.statistic;
  if (stat !== undefined && stat !== null) {
    const how = `stands ${stat.toFixed(4)} above the mean of its nearest rivals (threshold ${threshold.toFixed(4)})`;
    return result.known ? [`Identified: ${result.label}: its score ${how}`, "known"]
                        : [`Unknown: the best score ${result.score.toFixed(4)} ${how}`, "unknown"];
  }
  return result.known
    ? [`Identified: ${result.label}`, "known"]
    : [`Unknown: best score ${result.score.toFixed(4)} is below the threshold ${threshold.toFixed(4)}`, "unknown"];
}

async function identify() {
  const chosen = files("identify-files");
  if (!chosen.length) { flash("Choose or drop at least one photo.", "error"); return; }
  clearFlash();
  const out = await api("/v1/identify", {
    method: "POST", form: formOf({ files: chosen }),
    query: { k: $("identify-k").value, thumbnails: true, ...thresholdQuery() },
  });
  const box = $("identify-results");
  box.replaceChildren(...out.results.map((result, i) => {
    const [text, kind] = decisionText(result, out.threshold);
    const line = lineFor(result.statistic, out.threshold);
    return el("div", { class: "result", "data-testid": "identify-result" },
      el("div", { class: "query" }, el("img", { src: URL.createObjectURL(chosen[i]), alt: chosen[i].name }),
         el("div", { class: "legend", text: chosen[i].name })),
      el("div", { style: { flex: "1" } },
         el("p", { class: `decision ${kind}`, text }),
         el("ol", { class: "candidates" }, result.candidates.map((m, r) => candidateRow(r + 1, m, line))),
         el("p", { class: "legend", text: out.threshold === null ? "cosine scores (no threshold)"
                                          : line === null ? "cosine scores; the threshold applies to the cohort statistic"
                                                          : "cosine scores; red line: threshold" })));
  }));
}

async function verify() {
  const chosen = files("verify-file");
  if (!chosen.length) { flash("Choose or drop a photo.", "error"); return; }
  if (!stats) await enter();
  clearFlash();
  const label = $("verify-label").value;
  const v = await api("/v1/verify", { method: "POST", form: formOf({ label, file: chosen[0] }),
                                      query: { thumbnails: true, ...thresholdQuery() } });
  const cohortNote = v.statistic === undefined || v.statistic === null || v.threshold === null ? ""
    : ` (its score stands ${v.statistic.toFixed(4)} above the mean of the photo's nearest other classes; threshold ${v.threshold.toFixed(4)})`;
  const verdict = v.threshold === null ? `Score ${v.score.toFixed(4)} (no threshold: no decision)`
    : (v.accepted ? `Accepted: the photo matches ${v.label}` : `Rejected: the photo does not match ${v.label}`) + cohortNote;
  $("verify-result").replaceChildren(el("div", { class: "result", "data-testid": "verify-result" },
    el("div", { class: "query" }, el("img", { src: URL.createObjectURL(chosen[0]), alt: chosen[0].name })),
    el("div", { style: { flex: "1" } },
       el("p", { class: `decision ${v.accepted ? "known" : "unknown"}`, text: verdict }),
       el("ol", { class: "candidates" }, candidateRow(1, { label: v.label, score: v.score, thumbnail: v.thumbnail },
                                                      lineFor(v.statistic, v.threshold))))));
}
