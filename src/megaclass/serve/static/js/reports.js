// The latest `megaclass evaluate --report` of this gallery, shown inert (sandboxed, no scripts).
import { api } from "./api.js";
import { $ } from "./ui.js";

export function init() {}

export async function enter() {
  const frame = $("reports-frame");
  try {
    const response = await api("/v1/reports/latest", { raw: true });
    frame.srcdoc = await response.text();
    frame.hidden = false;
    const time = response.headers.get("X-Report-Time");
    $("reports-note").textContent = time ? `Written ${time.replace("T", " ")} by megaclass evaluate.` : "";
  } catch (err) {
    frame.hidden = true;
    frame.removeAttribute("srcdoc");
    if (err.status !== 404) throw err;
    $("reports-note").textContent = err.message;
  }
}
