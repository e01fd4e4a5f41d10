// The JSON API with the signed-in key. The key lives in sessionStorage only (this tab).
const KEY = "megaclass.apiKey";

export const session = {
  get key() { return sessionStorage.getItem(KEY); },
  set(key) { sessionStorage.setItem(KEY, key); },
  clear() { sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
    this.type = body && body.error;
  }
}

// api("/v1/stats") -> parsed JSON; options: method, form (FormData), json, query, raw (Response)
export async function api(path, { method = "GET", form, json, query, raw = false, key } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, v);
  }
  const headers = { Authorization: `Bearer ${key || session.key || ""}` };
  let body;
  if (form) body = form;
  if (json !== undefined) { body = JSON.stringify(json); headers["Content-Type"] = "application/json"; }
  const response = await fetch(url, { method, headers, body });
  if (!response.ok) {
    let detail = null;
    try { detail = await response.json(); } catch { /* not JSON */ }
    throw new ApiError(response.status, detail);
  }
  if (raw) return response;
  return response.json();
}

export function formOf(fields) {
  const form = new FormData();
  for (const [k, v] of Object.entries(fields)) {
    if (Array.isArray(v)) v.forEach((f) => form.append(k, f));
    else if (v !== undefined && v !== null) form.append(k, v);
  }
  return form;
}
