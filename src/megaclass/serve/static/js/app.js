// Console entry point: sign in, role-aware navigation, one page at a time (#hash routing).
import { api, session } from "./api.js";
import { $, clearFlash, dropZone, flash, showError } from "./ui.js";
import * as recognize from "./recognize.js";
import * as enroll from "./enroll.js";
import * as gallery from "./gallery.js";
import * as audit from "./audit.js";
import * as reports from "./reports.js";

const ROLES = ["reader", "enroller", "admin"];
const PAGES = { identify: recognize, verify: recognize, enroll, gallery, audit, reports };
export const state = { who: null };

const allows = (needed) => state.who && ROLES.indexOf(state.who.role) >= ROLES.indexOf(needed);

function applyRole() {
  // hide what this role may not do (the API refuses it anyway)
  for (const node of document.querySelectorAll("[data-role]")) node.hidden = !allows(node.dataset.role);
}

function show(page) {
  if (!state.who) page = "signin";
  const link = document.querySelector(`nav a[data-page="${page}"]`);
  if (page !== "signin" && (!link || link.hidden)) page = "identify";
  for (const section of document.querySelectorAll(".page")) section.hidden = section.id !== `page-${page}`;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  document.body.dataset.page = page;
  if (PAGES[page] && PAGES[page].enter) PAGES[page].enter(page, state).catch(showError);
}

async function signIn(key) {
  state.who = await api("/v1/whoami", { key });
  session.set(key);
  $("who-text").textContent = `${state.who.name} · ${state.who.role} · key ${state.who.id}`;
  $("nav").hidden = false;
  $("who").hidden = false;
  applyRole();
}

function signOut() {
  session.clear();
  state.who = null;
  $("nav").hidden = true;
  $("who").hidden = true;
  clearFlash();
  location.hash = "";
  show("signin");
}

function init() {
  document.querySelectorAll(".drop").forEach(dropZone);
  for (const module of new Set(Object.values(PAGES))) module.init(state);
  $("signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await signIn($("signin-key").value.trim());
      $("signin-key").value = "";
      clearFlash();
      show(location.hash.slice(1) || "identify");
    } catch (err) {
      flash(err.status === 401 ? "This key is unknown or revoked." : err.message, "error");
    }
  });
  $("sign-out").addEventListener("click", signOut);
  window.addEventListener("hashchange", () => { clearFlash(); show(location.hash.slice(1)); });
  const saved = session.key;
  if (saved) {
    signIn(saved).then(() => show(location.hash.slice(1) || "identify"), () => { session.clear(); show("signin"); });
  } else {
    show("signin");
  }
}

init();
