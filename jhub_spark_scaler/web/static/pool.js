// The admin page, live: every poll fetches api/pool with the page's own sort, filters and
// pages, then changes only what changed. Rows are keyed (data-key): the rows the server
// rendered are adopted as they are; a row is touched only when its cells' text differs,
// and then only the differing cells. Data goes in through textContent only, never as
// markup; the chart's SVG is parsed with DOMParser and imported as nodes.
(function () {
  "use strict";
  var root = document.getElementById("pool");
  if (!root) return;
  var prefix = root.dataset.prefix, xsrf = root.dataset.xsrf;
  var pollMs = Number(root.dataset.pollMs) || 2000, pageSize = Number(root.dataset.pageSize) || 50;
  var badges = JSON.parse(root.dataset.badges);  // state or problem kind -> Bootstrap colour
  var TABLE_NAMES = ["workers", "users", "apps", "servers", "decisions"];
  var SEP = "\u001f";
  // what the benchmark and the tests read: refreshes rendered, the last one's script time
  var stats = window.scalerPool = { refreshes: 0, lastMs: 0, changedRows: 0 };

  function dash(v) { return v === null || v === undefined || v === "" ? "-" : String(v); }
  function pair(used, total) { return total === null || total === undefined ? "-" : used + "/" + total; }
  function duration(s) {
    if (s === null || s === undefined) return "-";
    if (s < 120) return s + " s";
    if (s < 7200) return Math.floor(s / 60) + " min";
    if (s < 172800) return Math.floor(s / 3600) + " h " + Math.floor(s % 3600 / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor(s % 86400 / 3600) + " h";
  }
  function number(n) { return Number(n).toLocaleString("en-US"); }
  function setText(el, text) { if (el.textContent !== text) el.textContent = text; }
  // a property (hidden, disabled) written only when it changes: no needless style work
  function setFlag(el, name, value) { if (el[name] !== value) el[name] = value; }
  // JSON with the keys of every object sorted, as the template's tojson writes it
  function canonical(value) {
    return JSON.stringify(value, function (key, v) {
      if (!v || typeof v !== "object" || Array.isArray(v)) return v;
      return Object.keys(v).sort().reduce(function (o, k) { o[k] = v[k]; return o; }, {});
    });
  }
  function badgeClass(kind) { return "badge text-bg-" + (badges[kind] || "secondary"); }

  // A cell's text, as the template's `text` macro writes it; default: the row's field or "-".
  var CELLS = {
    workers: {
      cores: function (r) { return pair(r.cores_used, r.cores); },
      memory: function (r) { return pair(r.memory_used, r.memory); },
      users: function (r) { return dash(r.users.join(", ")); },
      age: function (r) { return duration(r.age); }
    },
    apps: { waiting_for: function (r) { return duration(r.waiting_for); } },
    servers: {
      name: function (r) { return r.name || "(default)"; },
      state: function (r) { return r.pending || (r.ready ? "ready" : "-"); }
    },
    users: {
      servers: function (r) {
        var names = r.server_names.map(function (n) { return n || "default"; });
        return r.servers + (names.length ? " (" + names.join(", ") + ")" : "");
      }
    },
    decisions: { reasons: function (r) { return dash(r.reasons.join("; ")); } }
  };

  function Table(name) {
    var self = this;
    this.name = name;
    this.section = document.getElementById(name + "-section");
    this.body = document.getElementById(name);
    this.sort = this.section.dataset.sort;
    this.offset = Number(this.section.dataset.offset) || 0;
    this.columns = Array.prototype.map.call(this.section.querySelectorAll("thead th"), function (th) {
      var cell = th.dataset.cell, custom = (CELLS[name] || {})[cell];
      return { th: th, col: th.dataset.col || "", kind: th.dataset.kind || "",
               text: custom || function (r) { return dash(r[cell]); } };
    });
    this.range = this.section.querySelector(".scaler-range");
    this.prev = this.section.querySelector("[data-page='-1']");
    this.next = this.section.querySelector("[data-page='1']");
    this.urgent = this.section.querySelector("[data-sort-to]");
    this.scroller = this.section.querySelector(".scaler-scroll");
    this.rows = new Map();  // key -> {tr, sig}: the rows on the page, adopted or made here
    Array.prototype.forEach.call(this.body.rows, function (tr) {
      var texts = Array.prototype.map.call(tr.cells, function (td) { return td.textContent; });
      self.rows.set(tr.dataset.key, { tr: tr, sig: texts.join(SEP) });
    });
  }

  Table.prototype.texts = function (row) {
    return this.columns.map(function (c) { return c.kind === "badge" ? row.state : c.text(row); });
  };

  Table.prototype.makeRow = function (key, texts) {
    var tr = document.createElement("tr");
    tr.dataset.key = key;
    this.columns.forEach(function (c, i) {
      var td = document.createElement("td");
      if (c.kind === "wrap" || c.kind === "list") td.className = "scaler-" + c.kind;
      if (c.kind === "badge") td.appendChild(document.createElement("span"));
      tr.appendChild(td);
      writeCell(td, c, texts[i]);
    });
    return tr;
  };

  function writeCell(td, column, text) {
    if (column.kind !== "badge") { td.textContent = text; return; }
    var span = td.firstElementChild;
    span.textContent = text;
    span.className = badgeClass(text) + " state-" + text;
  }

  Table.prototype.patch = function (tr, texts) {
    var cells = tr.cells;
    this.columns.forEach(function (c, i) {
      if (cells[i].textContent !== texts[i]) writeCell(cells[i], c, texts[i]);
    });
  };

  // The rows of this page, in the server's order; returns how many rows were made or changed.
  Table.prototype.update = function (data) {
    var self = this, wanted = [], seen = new Set(), changed = 0;
    data.forEach(function (row) {
      var key = String(row.key), texts = self.texts(row), sig = texts.join(SEP), entry = self.rows.get(key);
      if (!entry) {
        entry = { tr: self.makeRow(key, texts), sig: sig };
        self.rows.set(key, entry);
        changed++;
      } else if (entry.sig !== sig) {
        self.patch(entry.tr, texts);
        entry.sig = sig;
        changed++;
      }
      seen.add(key);
      wanted.push(entry.tr);
    });
    this.rows.forEach(function (entry, key) {
      if (!seen.has(key)) { entry.tr.remove(); self.rows.delete(key); changed++; }
    });
    var at = this.body.firstElementChild;  // move only the rows out of place
    wanted.forEach(function (tr) {
      if (tr === at) at = at.nextElementSibling; else self.body.insertBefore(tr, at);
    });
    return changed;
  };

  Table.prototype.paintSort = function () {
    var sort = this.sort;
    this.columns.forEach(function (c) {
      if (!c.col) return;
      var state = sort === c.col ? "ascending" : sort === "-" + c.col ? "descending" : "";
      if ((c.th.getAttribute("aria-sort") || "") === state) return;
      if (state) c.th.setAttribute("aria-sort", state); else c.th.removeAttribute("aria-sort");
    });
    if (this.urgent) setFlag(this.urgent, "disabled", sort === "attention");
  };

  Table.prototype.paintPager = function (meta, shown) {
    var text = (shown ? "rows " + number(this.offset + 1) + "-" + number(this.offset + shown) : "no rows") +
      " of " + number(meta.total) + (meta.matched !== meta.total ? " (matched " + number(meta.matched) + ")" : "");
    setText(this.range, text);
    setFlag(this.prev, "disabled", this.offset === 0);
    setFlag(this.next, "disabled", this.offset + shown >= meta.matched);
  };

  var tables = TABLE_NAMES.map(function (name) { return new Table(name); });
  var filterForm = document.getElementById("filters");
  var filters = readFilters();

  function readFilters() {
    var f = filterForm.elements;
    var states = Array.prototype.filter.call(filterForm.querySelectorAll("input[name='state']"),
                                             function (box) { return box.checked; });
    return {
      state: states.map(function (box) { return box.value; }).join(","),
      user: f.user.value.trim(), app: f.app.value.trim(),
      action: f.action.value.split(",").map(function (a) { return a.trim(); }).filter(Boolean).join(",")
    };
  }

  // The query of a refresh: the page's limit, each table's sort and page, the filters applied.
  function query() {
    var q = new URLSearchParams();
    q.set("limit", String(pageSize));
    tables.forEach(function (t) {
      if (t.sort) q.set(t.name + ".sort", t.sort);
      if (t.offset) q.set(t.name + ".offset", String(t.offset));
    });
    Object.keys(filters).forEach(function (k) { if (filters[k]) q.set(k, filters[k]); });
    return q.toString();
  }

  function renderStatus(p) {
    var status = document.getElementById("status");
    setText(status, p.status);
    var cls = "badge " + (p.status === "healthy" ? "text-bg-success" : p.status === "paused" ? "text-bg-warning"
                                                                                              : "text-bg-danger");
    if (status.className !== cls) status.className = cls;
    setText(document.getElementById("status-error"), p.error);
    setFlag(document.getElementById("paused-note"), "hidden", !p.paused);
    setText(document.getElementById("paused-by"), dash(p.paused_by));
    setFlag(document.getElementById("pause-form"), "hidden", p.paused);
    setFlag(document.getElementById("resume-form"), "hidden", !p.paused);
    setFlag(document.getElementById("hub-status"), "hidden", p.hub.healthy);
    setText(document.getElementById("hub-error"), p.hub.error);
    var t = p.target, cell = function (id, key) { return document.querySelector("#" + id + " [data-key='" + key + "']"); };
    setText(cell("target", "target"), dash(t.target) +
            (t.wanted !== null && t.wanted > t.max ? " (wanted " + t.wanted + ")" : ""));
    ["busy", "waiting", "prewarm_credit", "foreign_capacity"].forEach(function (k) { setText(cell("target", k), dash(t[k])); });
    setText(cell("target", "idle_workers"), t.idle_workers + (t.idle_override === null ? "" :
            " (override by " + dash(p.idle_override_by) + "; configured " + t.idle_workers_configured + ")"));
    setText(cell("target", "minmax"), t.min + " / " + t.max);
    Object.keys(p.counts).forEach(function (k) { var c = cell("counts", k); if (c) setText(c, String(p.counts[k])); });
    setText(cell("counts", "foreign"), String(p.foreign));
    replaceList(document.getElementById("plan-reasons"), p.plan.reasons, function (r) {
      var li = document.createElement("li"); li.textContent = r; return li;
    });
    renderProblems(p.problems);
    setText(document.getElementById("observed"), dash(p.observed_at));
  }

  // A short list (plan reasons, problems) is remade only when its items changed; the
  // template hands the items it rendered in data-items.
  var listSigs = new Map();
  function replaceList(list, items, make) {
    var sig = canonical(items);
    if (!listSigs.has(list)) listSigs.set(list, canonical(JSON.parse(list.dataset.items || "null")));
    if (listSigs.get(list) === sig) return;
    listSigs.set(list, sig);
    list.replaceChildren.apply(list, items.map(make));
  }

  function renderProblems(problems) {
    replaceList(document.getElementById("problem-list"), problems, function (p) {
      var li = document.createElement("li"), badge = document.createElement(p.table ? "a" : "span");
      li.className = "list-inline-item";
      badge.className = badgeClass(p.kind) + " scaler-problem";
      badge.dataset.kind = p.kind;
      badge.textContent = p.text;
      if (p.table) {
        badge.href = "#" + p.table + "-section";
        badge.dataset.table = p.table;
        badge.dataset.filter = JSON.stringify(p.filter || {});
      }
      li.appendChild(badge);
      return li;
    });
    setFlag(document.getElementById("no-problems"), "hidden", problems.length > 0);
  }

  function render(p) {
    var started = performance.now(), changed = 0, again = false;
    renderStatus(p);
    tables.forEach(function (t) {
      var meta = p.tables[t.name], rows = p[t.name];
      if (!rows.length && t.offset > 0 && meta.matched > 0) {  // the page ran out: go to the last one
        t.offset = Math.floor((meta.matched - 1) / pageSize) * pageSize;
        again = true;
      }
      changed += t.update(rows);
      t.paintSort();
      t.paintPager(meta, rows.length);
    });
    if (p.observed_at !== root.dataset.observed) {
      root.dataset.observed = p.observed_at || "";
      refreshChart(p.observed_at);
    }
    stats.refreshes++;
    stats.changedRows = changed;
    stats.lastMs = performance.now() - started;
    if (again) refresh();
  }

  function refreshChart(observed) {
    fetch(prefix + "api/chart", { credentials: "same-origin", headers: { "X-XSRFToken": xsrf } })
      .then(function (r) { if (!r.ok) throw new Error("chart: " + r.status); return r.text(); })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "image/svg+xml"), svg = doc.documentElement;
        if (svg.nodeName !== "svg" || doc.getElementsByTagName("parsererror").length) throw new Error("chart: not an SVG");
        document.getElementById("chart").replaceChildren(document.importNode(svg, true));
        setText(document.getElementById("chart-at"), dash(observed));
      })
      .catch(function (e) { setText(document.getElementById("status-error"), e.message); });
  }

  function request(url, options) {
    options = options || {};
    options.credentials = "same-origin";
    options.headers = { "Accept": "application/json", "X-XSRFToken": xsrf };
    return fetch(url, options).then(function (r) {
      // an error page that is not ours (the hub's proxy) is not JSON: its status says enough
      return r.json().catch(function () { return {}; }).then(function (body) {
        if (r.ok && body.status !== undefined) return body;
        var e = new Error(body.error || r.status + " " + r.statusText);
        e.status = r.status;
        throw e;
      });
    });
  }

  // One chain of refreshes: an admin's change starts a new request at once and the answer
  // to an older one (other sort, page or filters) is dropped.
  var sequence = 0, timer = null;
  function refresh() {
    clearTimeout(timer);
    var mine = ++sequence;
    request(prefix + "api/pool?" + query()).then(function (p) {
      if (mine !== sequence) return;
      setFlag(document.getElementById("filter-error"), "hidden", true);
      render(p);
    }).catch(function (e) {
      if (mine !== sequence) return;
      if (e.status !== 400) {  // the service or the network; a 400 names a filter to fix
        setText(document.getElementById("status-error"), "refresh failed: " + e.message);
        return;
      }
      var shown = document.getElementById("filter-error");
      shown.textContent = e.message;
      shown.hidden = false;
    }).finally(function () {
      if (mine === sequence) timer = setTimeout(refresh, pollMs);
    });
  }
  timer = setTimeout(refresh, pollMs);

  tables.forEach(function (t) {
    t.section.addEventListener("click", function (event) {
      var button = event.target.closest("button");
      if (!button || button.disabled) return;
      if (button.classList.contains("scaler-sort")) {
        var col = button.parentElement.dataset.col;
        t.sort = t.sort === col ? "-" + col : col;
        t.offset = 0;
      } else if (button.dataset.page) {
        t.offset = Math.max(0, t.offset + Number(button.dataset.page) * pageSize);
      } else if (button.dataset.sortTo) {
        t.sort = button.dataset.sortTo;
        t.offset = 0;
      } else {
        return;
      }
      t.paintSort();
      t.scroller.scrollTop = 0;  // another order or page starts at its top
      refresh();
    });
  });

  function applyFilters() {
    var next = readFilters();
    if (JSON.stringify(next) === JSON.stringify(filters)) return;
    filters = next;
    tables.forEach(function (t) { t.offset = 0; t.scroller.scrollTop = 0; });
    refresh();
  }
  filterForm.addEventListener("submit", function (event) { event.preventDefault(); applyFilters(); });
  filterForm.addEventListener("change", applyFilters);
  filterForm.addEventListener("reset", function (event) {
    event.preventDefault();
    filterForm.querySelectorAll("input[name='state']").forEach(function (box) { box.checked = false; });
    ["user", "app", "action"].forEach(function (k) { filterForm.elements[k].value = ""; });
    applyFilters();
  });

  // A problem's badge: show its rows (its filter on the workers table) and go there.
  document.getElementById("problem-list").addEventListener("click", function (event) {
    var link = event.target.closest("a[data-filter]");
    if (!link) return;
    event.preventDefault();
    var wanted = JSON.parse(link.dataset.filter), states = [].concat(wanted.state || []).join(",").split(",");
    filterForm.querySelectorAll("input[name='state']").forEach(function (box) {
      box.checked = states.indexOf(box.value) >= 0;
    });
    ["user", "app"].forEach(function (k) { filterForm.elements[k].value = wanted[k] || ""; });
    applyFilters();
    filterForm.scrollIntoView({ block: "start" });
  });

  document.querySelectorAll("form.scaler-action").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (event.submitter && event.submitter.name === "clear") form.elements.idle_workers.value = "";
      var shown = document.getElementById("action-error");
      request(form.action, { method: "POST", body: new URLSearchParams(new FormData(form)) })
        .then(function (p) { shown.hidden = true; renderStatus(p); refresh(); })
        .catch(function (e) { shown.textContent = e.message; shown.hidden = false; });
    });
  });
})();
