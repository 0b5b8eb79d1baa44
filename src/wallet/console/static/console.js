// Wallet console: one page over the service's JSON API, no framework and no build step.
//
// The API key is kept in this tab's sessionStorage and sent as a Bearer token to this service
// only (relative URLs, CSP connect-src 'self'). Everything the API returns is put into the page
// with textContent or DOM nodes, never as HTML. Writes ask for confirmation and carry an
// Idempotency-Key made once per confirmed action: retrying after a network error reuses it, so an
// adjustment or a reversal can never be posted twice.

const KEY_STORAGE = "wallet-console-api-key";
const API = new URL("api/v1/", document.baseURI);
const PAGE_SIZE = 20;
const REVERSIBLE = new Set(["topup", "bonus", "spend", "capture"]);

const state = {
  key: null,
  me: null,
  assets: [], // [{code, name, scale, is_active}]
  names: new Map(), // user id -> name, from searches
  user: null, // the user shown
  history: { cursors: [null], page: 0, next: null, filters: {} },
  fresh: null, // id of the transaction just posted, highlighted in the history
  auditLoaded: false,
};

// ---- small DOM helpers ------------------------------------------------------------------------

const $ = (selector) => document.querySelector(selector);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function show(node, visible = true) {
  node.hidden = !visible;
}

function setError(selector, error) {
  $(selector).textContent = error ? describe(error) : "";
}

let toastTimer = null;

function toast(message, bad = false) {
  const node = $("#toast");
  node.textContent = message;
  node.classList.toggle("bad", bad);
  show(node);
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => show(node, false), 6000);
}

// ---- formatting -------------------------------------------------------------------------------

const grouping = new Intl.NumberFormat("en-US");

function scaleOf(assetCode) {
  return state.assets.find((asset) => asset.code === assetCode)?.scale ?? 0;
}

/** An integer amount of minor units, shown in the asset's unit (exact: no floating point). */
function formatAmount(minor, assetCode, signed = false) {
  const scale = scaleOf(assetCode);
  const negative = minor < 0;
  const digits = String(Math.abs(minor)).padStart(scale + 1, "0");
  const whole = grouping.format(Number(digits.slice(0, digits.length - scale)));
  const text = scale > 0 ? `${whole}.${digits.slice(digits.length - scale)}` : whole;
  if (negative) return `−${text}`;
  return signed && minor > 0 ? `+${text}` : text;
}

function formatTime(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+Z$/, "").replace(/Z$/, "") : "";
}

function shortId(id) {
  return id ? id.slice(0, 8) : "";
}

// ---- the API ------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

class NetworkError extends Error {}

function describe(error) {
  if (error instanceof ApiError) {
    let text = `${error.status} ${error.code}: ${error.message}`;
    if (error.field) text += ` (field ${error.field})`;
    if (error.status === 403) text += "\nThis API key is not allowed to do this; use a key with the needed scope.";
    return text;
  }
  if (error instanceof NetworkError) return `Network error: ${error.message}`;
  return String(error?.message ?? error);
}

function newIdempotencyKey() {
  if (crypto.randomUUID) return `console-${crypto.randomUUID()}`;
  // Pages served over plain HTTP from another host are not a secure context: no randomUUID.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return `console-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

async function api(path, { method = "GET", params = {}, body, idempotencyKey, key = state.key } = {}) {
  const url = new URL(path, API);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Accept: "application/json", Authorization: `Bearer ${key}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (idempotencyKey) headers["Idempotency-Key"] = idempotencyKey;
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (error) {
    throw new NetworkError(error.message || "the service did not answer");
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const detail = data?.error ?? {};
    const error = new ApiError(
      response.status,
      detail.code ?? `http_${response.status}`,
      detail.message ?? response.statusText,
      detail.field ?? null,
    );
    if (response.status === 401 && key === state.key && state.key) signOut(error);
    throw error;
  }
  return data;
}

// Each part is one path segment. "." and ".." stay as they are in encodeURIComponent and the URL
// parser resolves them (a transaction "..", from a typed or pasted #/transactions/.. link, would
// ask GET /api/v1/ and reverse POST /api/v1/reverse): such ids are refused before any request.
const path = (...parts) =>
  parts
    .map((part) => {
      if (part === "." || part === "..") throw new Error(`“${part}” is not a valid id.`);
      return encodeURIComponent(part);
    })
    .join("/");

// ---- confirmation and writes --------------------------------------------------------------------

function confirmAction(text, okLabel) {
  const dialog = $("#confirm-dialog");
  $("#confirm-text").textContent = text;
  $("#confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
  });
}

/** Posts once confirmed; after a network error, offers to retry with the same idempotency key. */
async function confirmedWrite(text, okLabel, request) {
  if (!(await confirmAction(text, okLabel))) return null;
  const idempotencyKey = newIdempotencyKey();
  for (;;) {
    try {
      return await api(request.path, { method: "POST", body: request.body, idempotencyKey });
    } catch (error) {
      if (!(error instanceof NetworkError)) throw error;
      const retry = await confirmAction(
        `${describe(error)}\n\nIt may or may not have been posted. Retry with the same idempotency key ` +
          `(${idempotencyKey})? If it was posted, the retry returns it instead of posting again.`,
        "Retry",
      );
      if (!retry) throw error;
    }
  }
}

// ---- signing in ---------------------------------------------------------------------------------

async function signIn(key) {
  const me = await api("me", { key });
  state.key = key;
  state.me = me;
  sessionStorage.setItem(KEY_STORAGE, key);
  try {
    state.assets = (await api("asset-types")).data;
  } catch {
    state.assets = [];
  }
  $("#who-name").textContent = me.name;
  $("#who-scopes").textContent = `scopes: ${me.scopes.join(", ")}`;
  show($("#who"));
  show($("#tabs"));
  fillAssetSelects();
}

function signOut(error) {
  sessionStorage.removeItem(KEY_STORAGE);
  Object.assign(state, { key: null, me: null, user: null, fresh: null, auditLoaded: false });
  state.names.clear();
  // Nothing the previous key could see stays on the page.
  for (const form of document.querySelectorAll("form")) form.reset();
  for (const selector of ["#search-results", "#history tbody", "#balances tbody", "#audit-problems", "#volume-charts"]) {
    $(selector).replaceChildren();
  }
  for (const node of document.querySelectorAll(".error")) node.textContent = "";
  show($("#audit-result"), false);
  show($("#toast"), false);
  show($("#who"), false);
  show($("#tabs"), false);
  $("#login-error").textContent = error ? describe(error) : "";
  route();
}

function fillAssetSelects() {
  const active = state.assets.filter((asset) => asset.is_active);
  $("#adjust-asset").replaceChildren(...active.map((a) => el("option", { value: a.code, text: `${a.name} (${a.code})` })));
  $("#filter-asset").replaceChildren(
    el("option", { value: "", text: "any" }),
    ...state.assets.map((a) => el("option", { value: a.code, text: a.code })),
  );
}

// ---- views and routing --------------------------------------------------------------------------

const VIEWS = ["login", "users", "transaction", "audit", "volume"];

function showView(name, tab) {
  for (const view of VIEWS) show($(`#${view}-view`), view === name);
  for (const link of document.querySelectorAll("#tabs a")) {
    if (link.dataset.tab === tab) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function route() {
  if (!state.key) {
    showView("login");
    $("#api-key").focus();
    return;
  }
  const [section, ...rest] = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (section === "audit") showAudit();
  else if (section === "volume") showVolume();
  else if (section === "transactions" && rest[0]) showTransaction(rest[0]);
  else showUsers(rest[0]);
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

// ---- users --------------------------------------------------------------------------------------

async function search(query) {
  setError("#search-error", null);
  const results = $("#search-results");
  try {
    const found = (await api("search/users", { params: { q: query, limit: 20 } })).data;
    for (const user of found) state.names.set(user.user_id, user.name);
    results.replaceChildren(
      ...found.map((user) =>
        el(
          "li",
          {},
          el(
            "button",
            { type: "button", class: "user-result", onclick: () => go(`#/users/${encodeURIComponent(user.user_id)}`) },
            user.name,
            el("span", { class: "id", text: user.user_id }),
          ),
        ),
      ),
    );
    if (found.length === 0) results.replaceChildren(el("li", { class: "muted", text: `No user matches “${query}”.` }));
    if (found.length === 1) go(`#/users/${encodeURIComponent(found[0].user_id)}`);
  } catch (error) {
    results.replaceChildren();
    setError("#search-error", error);
  }
}

async function showUsers(userId) {
  showView("users", "users");
  if (!userId) {
    state.user = null;
    show($("#user-panel"), false);
    return;
  }
  if (state.user !== userId) {
    state.user = userId;
    resetHistory();
    $("#adjust-form").reset();
    setError("#adjust-error", null);
  }
  await loadUser();
}

async function userName(userId) {
  if (!state.names.has(userId)) {
    try {
      const found = (await api("search/users", { params: { q: userId, limit: 1 } })).data;
      if (found[0]?.user_id === userId) state.names.set(userId, found[0].name);
    } catch {
      // The id alone will do.
    }
  }
  return state.names.get(userId);
}

async function loadUser() {
  const userId = state.user;
  show($("#user-panel"));
  const name = await userName(userId);
  $("#user-title").replaceChildren(name ?? userId, " ", el("small", { class: "muted", text: name ? userId : "" }));
  const canAdjust = state.me.allows.credit || state.me.allows.spend;
  $("#adjust-error").textContent = canAdjust
    ? ""
    : "This API key has neither the credit nor the spend scope: the service will refuse adjustments (403).";
  await Promise.all([loadBalances(), loadHolds(), loadHistory()]);
}

async function loadBalances() {
  const body = $("#balances tbody");
  try {
    const balances = (await api(`wallets/${path(state.user)}/balance`)).balances;
    body.replaceChildren(
      ...balances.map((b) =>
        el(
          "tr",
          { "data-asset": b.asset_type },
          el("td", {}, el("strong", { text: b.name }), " ", el("span", { class: "muted", text: b.asset_type })),
          el("td", { class: "num balance", text: formatAmount(b.balance, b.asset_type) }),
          el("td", { class: "num", text: formatAmount(b.held, b.asset_type) }),
          el("td", { class: "num", text: formatAmount(b.available, b.asset_type) }),
          el("td", { class: b.debt ? "num debit" : "num", text: formatAmount(b.debt, b.asset_type) }),
        ),
      ),
    );
  } catch (error) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "error", text: describe(error) })));
  }
}

async function loadHolds() {
  const body = $("#holds tbody");
  try {
    const holds = (await api(`wallets/${path(state.user)}/holds`, { params: { status: "open" } })).data;
    body.replaceChildren(
      ...holds.map((h) =>
        el(
          "tr",
          {},
          el("td", { title: h.id, text: shortId(h.id) }),
          el("td", { text: h.asset_type }),
          el("td", { class: "num", text: formatAmount(h.amount, h.asset_type) }),
          el("td", { class: "time", text: formatTime(h.expires_at) }),
        ),
      ),
    );
    show($("#holds"), holds.length > 0);
    show($("#holds-empty"), holds.length === 0);
  } catch (error) {
    show($("#holds"), false);
    show($("#holds-empty"));
    $("#holds-empty").textContent = describe(error);
  }
}

/** Back to the first page without filters: where a transaction just posted shows. */
function resetHistory() {
  state.history = { cursors: [null], page: 0, next: null, filters: {} };
  $("#history-filters").reset();
}

/** The user's side of a transaction: the sum of its entries on the user's own account. */
function userEffect(tx, userId) {
  return tx.entries
    .filter((entry) => entry.account_kind === "user" && entry.account === userId)
    .reduce((sum, entry) => sum + entry.amount, 0);
}

function historyParams() {
  const { filters, cursors, page } = state.history;
  const params = { limit: PAGE_SIZE, cursor: cursors[page], asset_type: filters.asset, type: filters.type };
  if (filters.from) params.from = `${filters.from}T00:00:00Z`;
  if (filters.to) {
    const next = new Date(`${filters.to}T00:00:00Z`);
    next.setUTCDate(next.getUTCDate() + 1);
    params.to = next.toISOString().replace(".000Z", "Z");
  }
  return params;
}

async function loadHistory() {
  const body = $("#history tbody");
  setError("#history-error", null);
  let page;
  try {
    page = await api(`wallets/${path(state.user)}/transactions`, { params: historyParams() });
  } catch (error) {
    body.replaceChildren();
    setError("#history-error", error);
    return;
  }
  const userId = state.user;
  body.replaceChildren(
    ...page.data.map((tx) => {
      const effect = userEffect(tx, userId);
      const after = tx.user_id === userId ? tx.balance_after : tx.counterparty_balance_after;
      return el(
        "tr",
        { class: tx.id === state.fresh ? "fresh" : null, "data-id": tx.id, "data-type": tx.type },
        el("td", { class: "time", text: formatTime(tx.created_at) }),
        el("td", { text: tx.type }),
        el("td", { text: tx.asset_type }),
        el("td", { class: `num ${effect < 0 ? "debit" : "credit"}`, text: formatAmount(effect, tx.asset_type, true) }),
        el("td", { class: "num", text: after === null || after === undefined ? "" : formatAmount(after, tx.asset_type) }),
        el("td", { class: "text", text: tx.description ?? "" }),
        el(
          "td",
          {},
          el("button", {
            type: "button",
            class: "link open-transaction",
            title: tx.id,
            text: shortId(tx.id),
            onclick: () => go(`#/transactions/${tx.id}`),
          }),
        ),
      );
    }),
  );
  state.history.next = page.next_cursor;
  show($("#history-empty"), page.data.length === 0);
  $("#page-newer").disabled = state.history.page === 0;
  $("#page-older").disabled = !page.next_cursor;
  $("#page-number").textContent = `page ${state.history.page + 1}`;
}

async function adjust(event) {
  event.preventDefault();
  setError("#adjust-error", null);
  const direction = $("#adjust-direction").value;
  const asset = $("#adjust-asset").value;
  const amount = Number($("#adjust-amount").value);
  const reason = $("#adjust-reason").value.trim();
  if (!Number.isSafeInteger(amount) || amount < 1) {
    $("#adjust-error").textContent = "The amount must be a whole number of minor units, at least 1.";
    return;
  }
  if (!reason) {
    $("#adjust-error").textContent = "Give a reason: it is recorded with the transaction.";
    return;
  }
  const credit = direction === "credit";
  const kind = credit ? "bonus" : "spend";
  const who = `${state.names.get(state.user) ?? state.user} (${state.user})`;
  const text =
    `${credit ? "Credit" : "Debit"} ${formatAmount(amount, asset)} ${asset} ${credit ? "to" : "from"} ${who}, ` +
    `posted as a ${kind}${credit ? " from SYSTEM_PROMOTIONS" : " into SYSTEM_REVENUE"}.\nReason: ${reason}`;
  try {
    const tx = await confirmedWrite(text, credit ? "Credit" : "Debit", {
      path: `transactions/${kind}`,
      body: {
        user_id: state.user,
        asset_type: asset,
        amount,
        description: `Adjustment: ${reason}`,
        metadata: { source: "console", adjustment: direction, reason, operator_key: state.me.name },
      },
    });
    if (!tx) return;
    state.fresh = tx.id;
    toast(`Posted ${tx.type} ${shortId(tx.id)}: ${formatAmount(userEffect(tx, state.user), asset, true)} ${asset}`);
    $("#adjust-form").reset();
    resetHistory();
    await Promise.all([loadBalances(), loadHistory()]);
  } catch (error) {
    setError("#adjust-error", error);
  }
}

// ---- one transaction ----------------------------------------------------------------------------

function field(name, ...value) {
  return [el("dt", { text: name }), el("dd", {}, ...value)];
}

function userLink(userId) {
  return el("a", { href: `#/users/${encodeURIComponent(userId)}`, text: userId });
}

async function showTransaction(id) {
  showView("transaction", "users");
  setError("#reverse-error", null);
  $("#reverse-form").reset();
  let tx;
  try {
    tx = await api(`transactions/${path(id)}`);
  } catch (error) {
    $("#transaction-title").textContent = "Transaction";
    $("#transaction-fields").replaceChildren(el("dd", { class: "error", text: describe(error) }));
    $("#entries tbody").replaceChildren();
    show($("#reverse-card"), false);
    return;
  }
  $("#transaction-back").href = `#/users/${encodeURIComponent(tx.user_id)}`;
  $("#transaction-back").textContent = `← Back to ${state.names.get(tx.user_id) ?? tx.user_id}`;
  $("#transaction-title").textContent = `${tx.type} of ${formatAmount(tx.amount, tx.asset_type)} ${tx.asset_type}`;
  const fields = [
    ...field("Id", el("code", { text: tx.id })),
    ...field("Type", tx.type),
    ...field("Status", tx.status),
    ...field("User", userLink(tx.user_id)),
    ...(tx.counterparty_user_id ? field("To user", userLink(tx.counterparty_user_id)) : []),
    ...field("Asset", tx.asset_type),
    ...field("Amount", formatAmount(tx.amount, tx.asset_type)),
    ...(tx.fee ? field("Fee", formatAmount(tx.fee, tx.asset_type)) : []),
    ...field("Balance after", formatAmount(tx.balance_after, tx.asset_type)),
    ...field("Description", tx.description ?? ""),
    ...field("Metadata", el("code", { text: JSON.stringify(tx.metadata) })),
    ...field("Idempotency key", el("code", { text: tx.idempotency_key })),
    ...field("Created (UTC)", formatTime(tx.created_at)),
    ...(tx.reverses ? field("Reverses", el("a", { href: `#/transactions/${tx.reverses}`, text: tx.reverses })) : []),
    ...(REVERSIBLE.has(tx.type) ? field("Reversed so far", formatAmount(tx.reversed_amount, tx.asset_type)) : []),
    ...(tx.hold_id ? field("Hold", el("code", { text: tx.hold_id })) : []),
  ];
  $("#transaction-fields").replaceChildren(...fields);
  $("#entries tbody").replaceChildren(
    ...tx.entries.map((entry, index) =>
      el(
        "tr",
        {},
        el("td", { class: "num", text: index + 1 }),
        el("td", { class: "text" }, entry.account_kind === "user" ? userLink(entry.account) : entry.account),
        el("td", { text: entry.account_kind }),
        el("td", {
          class: `num ${entry.amount < 0 ? "debit" : "credit"}`,
          text: formatAmount(entry.amount, tx.asset_type, true),
        }),
      ),
    ),
  );
  show($("#reverse-card"));
  const left = tx.amount - tx.reversed_amount;
  const reversible = REVERSIBLE.has(tx.type) && left > 0;
  for (const control of $("#reverse-form").elements) control.disabled = !reversible;
  if (!REVERSIBLE.has(tx.type)) {
    $("#reverse-note").textContent = `A ${tx.type} cannot be reversed.`;
  } else if (left <= 0) {
    $("#reverse-note").textContent = "Fully reversed.";
  } else {
    const kind = tx.type === "spend" || tx.type === "capture" ? "refund" : "clawback";
    $("#reverse-note").textContent =
      `Posts a ${kind} of up to ${formatAmount(left, tx.asset_type)} ${tx.asset_type} ` +
      `(scope reverse). A clawback the user cannot cover is refused.`;
  }
  $("#reverse-form").onsubmit = (event) => reverse(event, tx, left);
}

async function reverse(event, tx, left) {
  event.preventDefault();
  setError("#reverse-error", null);
  const raw = $("#reverse-amount").value;
  const amount = raw === "" ? null : Number(raw);
  const reason = $("#reverse-reason").value.trim();
  if (amount !== null && (!Number.isSafeInteger(amount) || amount < 1 || amount > left)) {
    $("#reverse-error").textContent = `The amount must be a whole number from 1 to ${left}.`;
    return;
  }
  if (!reason) {
    $("#reverse-error").textContent = "Give a reason: it is recorded with the reversal.";
    return;
  }
  const body = { reason };
  if (amount !== null) body.amount = amount;
  const text =
    `Reverse ${formatAmount(amount ?? left, tx.asset_type)} ${tx.asset_type} of ${tx.type} ${tx.id} ` +
    `(user ${tx.user_id}).\nReason: ${reason}`;
  try {
    const reversal = await confirmedWrite(text, "Reverse", { path: `transactions/${path(tx.id)}/reverse`, body });
    if (!reversal) return;
    state.fresh = reversal.id;
    toast(`Posted ${reversal.type} ${shortId(reversal.id)} reversing ${shortId(tx.id)}`);
    resetHistory();
    go(`#/users/${encodeURIComponent(tx.user_id)}`);
  } catch (error) {
    setError("#reverse-error", error);
  }
}

// ---- audit --------------------------------------------------------------------------------------

function showAudit() {
  showView("audit", "audit");
  if (!state.auditLoaded) runAudit();
}

async function runAudit() {
  const button = $("#audit-run");
  button.disabled = true;
  button.textContent = "Running…";
  setError("#audit-error", null);
  try {
    const audit = await api("audit", { params: { full: "true" } });
    state.auditLoaded = true;
    const status = $("#audit-status");
    status.textContent = audit.clean ? "Clean" : `${audit.problems.length} check(s) failed`;
    status.className = `badge ${audit.clean ? "clean" : "dirty"}`;
    $("#audit-when").textContent = `checked ${formatTime(audit.checked_at)} UTC`;
    const c = audit.counts;
    $("#audit-counts").textContent =
      `${grouping.format(c.user_accounts)} user accounts, ${grouping.format(c.transactions)} transactions, ` +
      `${grouping.format(c.ledger_entries)} ledger entries, ${grouping.format(c.chain_links)} hash-chain links checked.`;
    $("#audit-problems").replaceChildren(
      ...audit.problems.map((p) => el("li", {}, el("strong", { text: p.check }), el("pre", { text: p.details.join("\n") }))),
    );
    $("#audit-system tbody").replaceChildren(
      ...audit.system_balances.map((b) =>
        el(
          "tr",
          {},
          el("td", { class: "text", text: b.account }),
          el("td", { text: b.asset_type }),
          el("td", { class: "num", text: formatAmount(b.balance, b.asset_type) }),
        ),
      ),
    );
    show($("#audit-result"));
  } catch (error) {
    show($("#audit-result"), false);
    setError("#audit-error", error);
  } finally {
    button.disabled = false;
    button.textContent = "Run the audit";
  }
}

// ---- volume -------------------------------------------------------------------------------------

function showVolume() {
  showView("volume", "volume");
  loadVolume();
}

function daysBetween(first, last) {
  const days = [];
  const day = new Date(`${first}T00:00:00Z`);
  const end = new Date(`${last}T00:00:00Z`);
  while (day <= end) {
    days.push(day.toISOString().slice(0, 10));
    day.setUTCDate(day.getUTCDate() + 1);
  }
  return days;
}

async function loadVolume() {
  setError("#volume-error", null);
  const charts = $("#volume-charts");
  let volume;
  try {
    volume = await api("reports/volume", { params: { days: $("#volume-days").value } });
  } catch (error) {
    charts.replaceChildren();
    setError("#volume-error", error);
    return;
  }
  const days = daysBetween(volume.from, volume.to);
  const codes = [...new Set([...state.assets.map((a) => a.code), ...volume.data.map((d) => d.asset_type)])].sort();
  charts.replaceChildren(
    ...codes.map((code) => {
      const byDay = new Map(volume.data.filter((d) => d.asset_type === code).map((d) => [d.day, d]));
      return chart(code, days.map((day) => byDay.get(day) ?? { day, credited: 0, debited: 0, transactions: 0 }));
    }),
  );
}

/** A bar chart as inline SVG: credited above the axis, debited below, one pair of bars a day. */
function chart(code, series) {
  const width = 560;
  const height = 200;
  const left = 64;
  const right = 8;
  const top = 10;
  const bottom = 24;
  const plotHeight = height - top - bottom;
  const max = Math.max(1, ...series.map((d) => Math.max(d.credited, d.debited)));
  const zero = top + plotHeight / 2;
  const scale = plotHeight / 2 / max;
  const step = (width - left - right) / series.length;
  const barWidth = Math.max(1, step * 0.7);
  const graphic = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": `${code}: credited and debited per day`,
  });
  for (const [value, y] of [[max, top], [0, zero], [-max, top + plotHeight]]) {
    graphic.append(svg("line", { class: value === 0 ? "axis" : "grid", x1: left, x2: width - right, y1: y, y2: y }));
    graphic.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, formatAmount(value, code, true)));
  }
  series.forEach((d, index) => {
    const x = left + index * step + (step - barWidth) / 2;
    const group = svg("g", { class: "day", "data-day": d.day });
    group.append(
      svg(
        "title",
        {},
        `${d.day}: credited ${formatAmount(d.credited, code)}, debited ${formatAmount(d.debited, code)}, ` +
          `${d.transactions} transaction(s)`,
      ),
    );
    if (d.credited) {
      group.append(svg("rect", { class: "bar-credit", x, y: zero - d.credited * scale, width: barWidth, height: d.credited * scale }));
    }
    if (d.debited) group.append(svg("rect", { class: "bar-debit", x, y: zero, width: barWidth, height: d.debited * scale }));
    // An invisible full-height target, so the tooltip shows on empty days too.
    group.append(svg("rect", { x: left + index * step, y: top, width: step, height: plotHeight, fill: "transparent" }));
    graphic.append(group);
  });
  const labelled = new Set([0, Math.floor((series.length - 1) / 2), series.length - 1]);
  for (const index of labelled) {
    const x = left + index * step + step / 2;
    graphic.append(svg("text", { x, y: height - 6, "text-anchor": "middle" }, series[index].day.slice(5)));
  }
  const totals = series.reduce(
    (sum, d) => ({ credited: sum.credited + d.credited, debited: sum.debited + d.debited, n: sum.n + d.transactions }),
    { credited: 0, debited: 0, n: 0 },
  );
  return el(
    "figure",
    { class: "chart card", "data-asset": code },
    el("h3", { text: code }),
    el(
      "p",
      { class: "totals" },
      `credited ${formatAmount(totals.credited, code)} · debited ${formatAmount(totals.debited, code)} · `,
      `${grouping.format(totals.n)} transaction(s)`,
    ),
    graphic,
    el(
      "figcaption",
      { class: "legend" },
      el("span", {}, el("span", { class: "swatch credit" }), "credited"),
      el("span", {}, el("span", { class: "swatch debit" }), "debited"),
    ),
  );
}

// ---- wiring -------------------------------------------------------------------------------------

function wire() {
  $("#login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("#api-key").value.trim();
    $("#login-error").textContent = "";
    try {
      await signIn(key);
      $("#api-key").value = "";
      route();
    } catch (error) {
      $("#login-error").textContent = describe(error);
    }
  });
  $("#sign-out").addEventListener("click", () => signOut(null));
  $("#toast").addEventListener("click", () => show($("#toast"), false));
  $("#search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    search($("#search-q").value.trim());
  });
  $("#adjust-form").addEventListener("submit", adjust);
  $("#history-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    state.history.filters = {
      asset: $("#filter-asset").value,
      type: $("#filter-type").value,
      from: $("#filter-from").value,
      to: $("#filter-to").value,
    };
    state.history.cursors = [null];
    state.history.page = 0;
    loadHistory();
  });
  $("#page-older").addEventListener("click", () => {
    const { history } = state;
    if (!history.next) return;
    history.cursors = history.cursors.slice(0, history.page + 1).concat(history.next);
    history.page += 1;
    loadHistory();
  });
  $("#page-newer").addEventListener("click", () => {
    if (state.history.page === 0) return;
    state.history.page -= 1;
    loadHistory();
  });
  $("#audit-run").addEventListener("click", runAudit);
  $("#volume-days").addEventListener("change", loadVolume);
  window.addEventListener("hashchange", route);
}

async function start() {
  wire();
  const saved = sessionStorage.getItem(KEY_STORAGE);
  if (saved) {
    try {
      await signIn(saved);
    } catch (error) {
      sessionStorage.removeItem(KEY_STORAGE);
      $("#login-error").textContent = describe(error);
    }
  }
  route();
}

start();
