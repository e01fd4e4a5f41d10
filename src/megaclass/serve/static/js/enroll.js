// Enroll a class from several photos (with a preview of the model's input), add samples, erase.
import { api, formOf } from "./api.js";
import { $, clearFlash, el, files, flash, resetFiles, showError } from "./ui.js";

export function init() {
  $("enroll-preview-btn").addEventListener("click", () => preview().catch(showError));
  $("enroll-form").addEventListener("submit", (e) => { e.preventDefault(); enroll().catch(showError); });
  $("add-form").addEventListener("submit", (e) => { e.preventDefault(); addSamples().catch(showError); });
  $("erase-form").addEventListener("submit", (e) => { e.preventDefault(); erase().catch(showError); });
  const confirmMatches = () => {
    const label = $("erase-label").value;
    $("erase-btn").disabled = !label || $("erase-confirm").value !== label;
  };
  $("erase-label").addEventListener("input", confirmMatches);
  $("erase-confirm").addEventListener("input", confirmMatches);
  document.querySelector('[data-input="enroll-files"]').addEventListener("filechange", () => {
    $("enroll-preview").replaceChildren();
  });
}

export async function enter() {}

async function preview() {
  const chosen = files("enroll-files");
  if (!chosen.length) { flash("Choose or drop the photos first.", "error"); return; }
  const out = await api("/v1/preview", { method: "POST", form: formOf({ files: chosen }) });
  $("enroll-preview").replaceChildren(
    el("p", { class: "muted", text: `What the model sees: ${out.size}×${out.size}, ${out.channels === 1 ? "grey" : "colour"} (before its own normalisation)` }),
    ...out.images.map((src, i) => el("img", { src, alt: `model input of ${chosen[i].name}`, "data-testid": "model-input" })));
}

async function enroll() {
  const chosen = files("enroll-files");
  if (!chosen.length) { flash("Choose or drop the class's photos.", "error"); return; }
  clearFlash();
  const label = $("enroll-label").value;
  const out = await api("/v1/classes", { method: "POST", form: formOf({
    label, files: chosen, replace: $("enroll-replace").checked, retain_thumbnails: $("enroll-thumbs").checked,
  }) });
  flash(`Enrolled ${out.label} from ${out.samples} photos; the gallery has ${out.gallery_classes} classes.`);
  resetFiles("enroll-files");
  $("enroll-preview").replaceChildren();
}

async function addSamples() {
  const chosen = files("add-files");
  if (!chosen.length) { flash("Choose or drop the photos to add.", "error"); return; }
  clearFlash();
  const label = $("add-label").value;
  const out = await api(`/v1/classes/${encodeURIComponent(label)}/samples`, {
    method: "POST", form: formOf({ files: chosen, retain_thumbnails: $("add-thumbs").checked }),
  });
  flash(`Added ${out.samples} photos to ${out.label}.`);
  resetFiles("add-files");
}

async function erase() {
  const label = $("erase-label").value;
  if ($("erase-confirm").value !== label) { flash("The confirmation does not match the label.", "error"); return; }
  clearFlash();
  const out = await api(`/v1/classes/${encodeURIComponent(label)}`, { method: "DELETE" });
  flash(`Erased ${out.label}: ${out.templates_removed} templates removed; ${out.gallery_classes} classes left.`);
  $("erase-label").value = "";
  $("erase-confirm").value = "";
  $("erase-btn").disabled = true;
}
