// The status page: renders a snapshot (/status.json's shape) and follows /events.
// Every string from the server goes into the DOM through text nodes or setAttribute,
// never parsed as markup: service names, reasons and probe details come from users.
'use strict';
(function () {
  var $ = function (id) { return document.getElementById(id); };

  // el('td', {class: 'x'}, 'text', otherNode): children are strings (text nodes) or nodes.
  function el(tag, attrs) {
    var e = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        if (attrs[k] !== null && attrs[k] !== undefined) e.setAttribute(k, String(attrs[k]));
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      var c = arguments[i];
      if (c === null || c === undefined) continue;
      e.appendChild(typeof c === 'object' ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  function setText(id, text) { $(id).textContent = text === null || text === undefined ? '' : String(text); }
  function dash(v) { return v === null || v === undefined || v === '' ? '—' : String(v); }
  function time(ms) {
    if (!ms) return '—';
    var d = new Date(ms);
    var p = function (n, w) { return String(n).padStart(w || 2, '0'); };
    return p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds()) + '.' + p(d.getMilliseconds(), 3);
  }
  function dur(ms) {
    if (ms === null || ms === undefined) return '—';
    return ms < 1000 ? ms + ' ms' : (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + ' s';
  }
  function tbody(id, rows) {
    var body = $(id).tBodies[0];
    body.replaceChildren.apply(body, rows);
  }

  function renderHeader(s) {
    var n = s.node;
    setText('cluster', n.cluster);
    setText('node-id', n.id);
    setText('node-region', '(' + n.region + ')');
    setText('role', n.role + (n.current ? '' : ' · state may be stale'));
    $('role').className = n.current ? '' : 'warn';
    var leader = null;
    n.members.forEach(function (m) { if (m.id === n.leader) leader = m; });
    setText('leader-id', n.leader === null ? 'none known' : n.leader);
    setText('leader-where', leader ? '(' + leader.region + ', ' + leader.addr + ')' : '');
    setText('term', n.term);
    setText('applied', n.applied);
  }

  function runText(r) {
    if (!r) return '';
    var t = r.kind + ' → ' + r.to;
    if (r.step) t += ', step ' + r.step + ' (' + r.step_number + '/' + r.steps + ')';
    return t;
  }

  function renderServices(s) {
    tbody('services', s.services.map(function (v) {
      var auto = [];
      if (v.frozen) auto.push(el('span', { class: 'tag warn' }, 'frozen'));
      if (v.paused) auto.push(el('span', { class: 'tag bad', title: v.paused }, 'paused'));
      if (!auto.length) auto.push(el('span', { class: 'muted' }, 'on'));
      var autoCell = el('td', null);
      auto.forEach(function (a) { autoCell.appendChild(a); });
      return el('tr', { 'data-service': v.name },
        el('td', { class: 'name' }, v.name),
        el('td', { class: 'primary' + (v.primary ? '' : ' bad') }, v.primary || 'none'),
        el('td', { class: v.state === 'held' ? 'ok' : 'warn' }, v.state + (v.holder && v.state !== 'held' ? ' (' + v.holder + ')' : '')),
        el('td', { class: 'num token' }, v.token),
        el('td', { class: v.mode === 'read-only' ? 'warn' : '' }, v.mode),
        autoCell,
        el('td', { class: 'run' }, runText(v.run)));
    }));
  }

  function renderHealth(s) {
    var vantageRegions = [];
    s.node.members.forEach(function (m) {
      if (m.voter && vantageRegions.indexOf(m.region) < 0) vantageRegions.push(m.region);
    });
    var blocks = s.services.map(function (v) {
      var head = el('tr', null, el('th', null, 'region'), el('th', null, 'verdict'));
      vantageRegions.forEach(function (r) { head.appendChild(el('th', null, 'from ' + r)); });
      head.appendChild(el('th', null, 'why'));
      var rows = v.health.map(function (h) {
        var cls = h.verdict === 'healthy' ? 'ok' : h.verdict === 'down' ? 'bad' : 'muted';
        var tr = el('tr', { 'data-region': h.region },
          el('td', null, h.region, v.primary === h.region ? el('span', { class: 'tag' }, 'primary') : null),
          el('td', { class: 'verdict ' + cls }, h.verdict));
        vantageRegions.forEach(function (r) {
          var reports = h.vantages.filter(function (o) { return o.vantage_region === r; });
          var td = el('td', null);
          if (!reports.length) td.appendChild(el('span', { class: 'muted' }, '–'));
          reports.forEach(function (o) {
            td.appendChild(el('span', {
              class: o.healthy ? 'ok' : 'bad',
              title: 'node ' + o.node + ' at ' + time(o.at_ms) + ': ' + o.detail
            }, o.healthy ? '✓ ' : '✗ '));
          });
          tr.appendChild(td);
        });
        tr.appendChild(el('td', { class: 'reason' }, h.explanation));
        return tr;
      });
      var table = el('table', null, el('thead', null, head), el('tbody', null));
      rows.forEach(function (r) { table.tBodies[0].appendChild(r); });
      return el('div', { class: 'health-service', 'data-service': v.name }, el('h3', null, v.name), table);
    });
    var box = $('health');
    box.replaceChildren.apply(box, blocks);
    if (!blocks.length) box.appendChild(el('p', { class: 'muted' }, 'no services'));
  }

  function renderTimeline(s) {
    var items = [];
    s.changes.forEach(function (c) {
      items.push({
        index: c.revision, at: c.at_ms, service: c.service,
        what: c.kind + (c.holder ? ' ' + c.holder : '') + (c.token ? ' (token ' + c.token + ')' : ''),
        cls: c.kind === 'granted' ? 'ok' : c.kind === 'vacated' ? 'bad' : '',
        detect: null, recover: null, why: c.reason, kind: 'lease'
      });
    });
    s.runs.forEach(function (r) {
      var what = 'run ' + r.id + ': ' + r.kind + ' ' + dash(r.from) + ' → ' + r.to + ', ' + r.state;
      if (r.step) what += ' at ' + r.step;
      items.push({
        index: r.id, at: r.detected_ms || r.decided_ms, service: r.service, what: what,
        cls: r.state === 'succeeded' ? 'ok' : r.state === 'running' ? 'warn' : 'bad',
        detect: r.time_to_detect_ms, recover: r.time_to_recover_ms,
        why: r.trigger + (r.reason ? ': ' + r.reason : '') + (r.error ? ' — ' + r.error : ''),
        kind: 'run'
      });
    });
    items.sort(function (a, b) { return b.index - a.index || (a.kind === 'run' ? -1 : 1); });
    tbody('timeline', items.slice(0, 80).map(function (i) {
      return el('tr', { 'data-kind': i.kind },
        el('td', { class: 'num' }, i.index),
        el('td', { class: 'num' }, time(i.at)),
        el('td', null, i.service),
        el('td', { class: i.cls }, i.what),
        el('td', { class: 'num' }, dur(i.detect)),
        el('td', { class: 'num' }, dur(i.recover)),
        el('td', { class: 'reason' }, i.why));
    }));
  }

  function renderMembers(s) {
    var n = s.node;
    setText('lag-note', n.role === 'leader'
      ? 'Lag: log entries each member is behind this leader.'
      : 'Lag is known on the leader only; this node is ' + n.role + '.');
    tbody('members', n.members.map(function (m) {
      var roles = [m.voter ? 'voter' : 'learner'];
      if (m.leader) roles.push('leader');
      if (m.this) roles.push('this node');
      return el('tr', { 'data-node': m.id },
        el('td', { class: 'num' }, m.id),
        el('td', null, m.region),
        el('td', null, m.addr),
        el('td', { class: m.leader ? 'primary' : '' }, roles.join(', ')),
        el('td', { class: 'num' }, dash(m.matched)),
        el('td', { class: 'num' + (m.lag > 100 ? ' bad' : '') }, dash(m.lag)));
    }));
  }

  function render(s) {
    if (!s || !s.node) return;
    renderHeader(s);
    renderServices(s);
    renderHealth(s);
    renderTimeline(s);
    renderMembers(s);
  }

  var source = null, lastHeard = Date.now(), backoff = 1000;
  function conn(text, cls) { var c = $('conn'); c.textContent = text; c.className = 'conn ' + cls; }
  function heard() {
    lastHeard = Date.now();
    backoff = 1000;
    conn('live · ' + time(lastHeard), 'live');
  }
  function connect() {
    if (source) source.close();
    source = new EventSource('events');
    source.addEventListener('status', function (e) {
      heard();
      try { render(JSON.parse(e.data)); } catch (err) { conn('bad update: ' + err, 'down'); }
    });
    source.addEventListener('heartbeat', heard);
    source.onerror = function () {
      conn('disconnected · retrying', 'down');
      // The browser retries a dropped stream by itself; a refused one (503, node gone)
      // is CLOSED for good, so retry that ourselves with a growing delay.
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(connect, backoff);
        backoff = Math.min(backoff * 2, 15000);
      }
    };
  }
  // A stream that went silent (no heartbeat in 15 s) is half-open: start over.
  setInterval(function () {
    if (Date.now() - lastHeard > 15000) { lastHeard = Date.now(); connect(); }
  }, 5000);

  try { render(JSON.parse($('initial').textContent)); } catch (err) { conn('bad snapshot', 'down'); }
  connect();
})();
