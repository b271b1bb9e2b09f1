// Renders a key-token report from the JSON in #ktae-data. Groups render when opened, so a
// report over thousands of long rollouts opens fast. Model text is untrusted: every string
// goes through esc() or textContent.
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("ktae-data").textContent);
  const esc = (s) => s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  const visible = (s) => s === "" ? "\u2205" :
    s.replace(/ /g, "\u2423").replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5").replace(/\r/g, "\u240d");
  const cls = (k) => (k < 0 ? "n" + -k : k > 0 ? "p" + k : "");
  const fmt = (x, d) => (Math.abs(x) >= 1e-3 || x === 0 ? x.toFixed(d) : x.toExponential(2));
  const signed = (x) => (x > 0 ? "+" : "") + fmt(x, 3);

  // Base64 LEB128 varints (html.py's pack_varints) -> array of ints.
  function decode(b64) {
    const bin = atob(b64), out = [];
    let value = 0, shift = 0;
    for (let i = 0; i < bin.length; i++) {
      const c = bin.charCodeAt(i);
      value += (c & 127) * 2 ** shift;
      if (c < 128) { out.push(value); value = 0; shift = 0; } else shift += 7;
    }
    return out;
  }
  const label = (t, r) => (t.lx && t.lx[r] !== undefined ? t.lx[r] : visible(t.text[r]));

  // Statistic `name` of each token of a group, through the token's profile.
  const column = (g, name) => g.tok.pr.map((i) => g.P[name][i]);

  function tokenTable(g, rows, title) {
    const t = g.tok, P = g.P, pr = t.pr;
    let h = "<div><h3>" + title + "</h3><table><tr><th>token</th><th>v</th><th>in correct</th><th>in incorrect</th>" +
      "<th>occurrences</th></tr>";
    for (const r of rows) {
      const q = pr[r];
      h += '<tr><td><span class="tok ' + cls(P.k[q]) + '">' + esc(label(t, r)) + "</span></td><td class=num>" +
        signed(P.v[q]) + "</td><td class=num>" + P.a[q] + "/" + g.nT + "</td><td class=num>" + P.b[q] + "/" + g.nF +
        "</td><td class=num>" + P.oT[q] + " + " + P.oF[q] + "</td></tr>";
    }
    return h + (rows.length ? "" : "<tr><td colspan=5>none</td></tr>") + "</table></div>";
  }

  function renderGroup(el, g) {
    const t = g.tok, v = column(g, "v"), idx = Array.from(v, (_, i) => i);
    const credited = idx.filter((r) => v[r] > 0).sort((x, y) => v[y] - v[x]).slice(0, D.topCount);
    const blamed = idx.filter((r) => v[r] < 0).sort((x, y) => v[x] - v[y]).slice(0, D.topCount);
    const escText = t.text.map(esc), klass = column(g, "k").map((k, r) => {
      const c = cls(k);
      return k !== 0 && t.text[r].includes("\n") ? c + " nl" : c;
    });
    let h = '<div class="prompt"></div>';
    if (!g.nT || !g.nF) h += '<p class="notice">All rollouts of this group are ' + (g.nT ? "correct" : "incorrect") +
      ": KTAE gives no token credit here (the advantage stays rollout-level).</p>";
    h += '<div class="tables">' + tokenTable(g, credited, "Most credited") + tokenTable(g, blamed, "Most blamed") +
      "</div>";
    for (const ro of g.rollouts) {
      const seq = decode(ro.seq), x = ro.x || {};
      const parts = [];
      for (let j = 0; j < seq.length; j++) {
        const r = seq[j];
        const text = j in x ? esc(x[j]) : escText[r];
        parts.push('<span class="' + klass[r] + '" data-r="' + r + '">' + text + "</span>");
      }
      h += '<div class="rollout ' + (ro.c ? "ok" : "bad") + '"><div class="head"><span class="verdict">' +
        (ro.c ? "\u2713 correct" : "\u2717 incorrect") + "</span> \u00b7 score " + fmt(ro.s, 3) +
        " \u00b7 rollout advantage " + signed(ro.A) + " \u00b7 " + seq.length + " tokens</div><div class=\"text\">" +
        parts.join("") + "</div></div>";
    }
    const body = el.querySelector(".body");
    body.innerHTML = h;
    body.querySelector(".prompt").textContent = g.prompt;
    el.dataset.rendered = "1";
  }

  function build() {
    const list = document.getElementById("groups");
    const frag = document.createDocumentFragment();
    D.groups.forEach((g, i) => {
      const el = document.createElement("details");
      el.className = "group";
      el.id = "g" + i;
      const summary = document.createElement("summary");
      summary.textContent = g.name;
      const sum = document.createElement("span");
      sum.className = "sum";
      sum.textContent = g.rollouts.length + " rollouts, " + g.nT + " correct \u00b7 " +
        (100 * g.strong).toFixed(1) + "% of tokens strongly weighted";
      summary.appendChild(sum);
      const body = document.createElement("div");
      body.className = "body";
      el.append(summary, body);
      el.addEventListener("toggle", () => { if (el.open && !el.dataset.rendered) renderGroup(el, g); });
      frag.appendChild(el);
    });
    list.appendChild(frag);
    const target = /^#g\d+$/.test(location.hash) ? document.querySelector(location.hash) : list.firstElementChild;
    if (target) {
      target.open = true;
      renderGroup(target, D.groups[+target.id.slice(1)]);
      if (location.hash) target.scrollIntoView();
    }

    const tip = document.getElementById("tip");
    list.addEventListener("mouseover", (e) => {
      const span = e.target.closest(".text span");
      if (!span) return;
      const g = D.groups[+span.closest("details").id.slice(1)], t = g.tok, r = +span.dataset.r;
      const P = g.P, q = t.pr[r];
      const row = (k, v) => "<tr><td>" + k + "</td><td class=num>" + v + "</td></tr>";
      tip.innerHTML = '<div><span class="tok ' + cls(P.k[q]) + '">' + esc(label(t, r)) + "</span> id " + t.id[r] +
        (D.ignore.includes(t.id[r]) ? " (ignored)" : "") + "</div><table>" + row("value v", signed(P.v[q])) +
        row("a (in correct)", P.a[q] + " of " + g.nT) + row("b (in incorrect)", P.b[q] + " of " + g.nF) +
        row("c (correct, absent)", g.nT - P.a[q]) + row("d (incorrect, absent)", g.nF - P.b[q]) +
        row("Fisher p-value", fmt(P.p[q], 4)) + row("F = exp(\u22122p)", fmt(P.F[q], 4)) +
        row("IG (bits)", fmt(P.IG[q], 4)) + row("h", fmt(P.h[q], 4)) + row("TF", fmt(P.TF[q], 4)) +
        row("occurrences (correct + incorrect)", P.oT[q] + " + " + P.oF[q]) + "</table>";
      tip.style.display = "block";
      place(e);
    });
    function place(e) {
      const x = Math.min(e.clientX + 14, window.innerWidth - tip.offsetWidth - 4);
      const below = e.clientY + 16 + tip.offsetHeight <= window.innerHeight;
      const y = below ? e.clientY + 16 : e.clientY - tip.offsetHeight - 8;
      tip.style.left = x + "px";
      tip.style.top = y + "px";
    }
    list.addEventListener("mousemove", (e) => { if (tip.style.display === "block") place(e); });
    list.addEventListener("mouseout", (e) => { if (e.target.closest(".text span")) tip.style.display = "none"; });
    const ms = performance.now().toFixed(0);
    document.documentElement.dataset.renderMs = ms;
    console.info("ktae report: first render done " + ms + " ms after navigation start");
  }

  build();
})();
