// Small DOM helpers. Text always goes in through textContent: labels never become markup.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "style") Object.assign(node.style, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== false && v !== null && v !== undefined) node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (id) => document.getElementById(id);

export function flash(text, kind = "ok") {
  const box = $("flash");
  box.replaceChildren(el("div", { class: `msg ${kind}`, text }));
}

export function clearFlash() { $("flash").replaceChildren(); }

export function showError(err) {
  const prefix = err.status ? `${err.status} ${err.type || ""}: ` : "";
  flash(prefix + err.message, "error");
}

// A drop zone around a file input: drag & drop or choose; lists the chosen files with previews.
// files(id) returns the current File list of that zone.
const chosen = new Map();

export function dropZone(zone) {
  const input = $(zone.dataset.input);
  const list = zone.querySelector(".chosen");
  const set = (files) => {
    const kept = input.multiple ? [...files] : [...files].slice(0, 1);
    chosen.set(input.id, kept);
    list.replaceChildren(...kept.map((f) => el("li", {}, el("img", { src: URL.createObjectURL(f), alt: f.name }),
                                                   el("div", { text: f.name }))));
    zone.dispatchEvent(new Event("filechange"));
  };
  input.addEventListener("change", () => set(input.files));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    set([...e.dataTransfer.files].filter((f) => f.type.startsWith("image/")));
  });
  chosen.set(input.id, []);
}

export function files(inputId) { return chosen.get(inputId) || []; }

export function resetFiles(inputId) {
  const input = $(inputId);
  input.value = "";
  chosen.set(inputId, []);
  input.closest(".drop").querySelector(".chosen").replaceChildren();
}

export function pct(x) { return x === null || x === undefined ? "–" : `${(100 * x).toFixed(2)} %`; }
