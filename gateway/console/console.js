// fleet console: plain JavaScript, no framework, no build step. Every piece of fleet data
// comes from the admin API's JSON endpoints, sent with the token kept in this tab.
'use strict';
(() => {
  const TOKEN_KEY = 'fleet-console-token';
  const SVG = 'http://www.w3.org/2000/svg';
  const REVOCATION_REASONS = ['keyCompromise', 'cessationOfOperation', 'superseded',
    'affiliationChanged', 'privilegeWithdrawn', 'unspecified'];
  const $ = (sel) => document.querySelector(sel);
  const view = $('#view');
  let timer = null;
  let generation = 0;
  const devices = { q: '', offset: 0, limit: 25 };
  const refusals = { reason: '', event: 'refused', device: '' };

  class AuthError extends Error {}
  class Stale extends Error {}

  // ---- DOM helpers -------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const e = document.createElement(tag);
    setAttrs(e, attrs);
    e.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false)
      .map((c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
    return e;
  }
  function s(tag, attrs, ...children) {
    const e = document.createElementNS(SVG, tag);
    setAttrs(e, attrs);
    e.append(...children.map((c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
    return e;
  }
  function setAttrs(e, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
  }
  function td(label, ...children) { return h('td', { 'data-label': label }, ...children); }

  // ---- formatting ----------------------------------------------------------------------
  function fmtTime(unix) {
    return new Date(unix * 1000).toISOString().replace('T', ' ').slice(0, 19) + ' UTC';
  }
  function daysLeft(notAfter) {
    const days = (notAfter - Date.now() / 1000) / 86400;
    if (days < 0) return 'expired ' + Math.ceil(-days) + ' days ago';
    return days < 2 ? (days * 24).toFixed(1) + ' hours left' : Math.floor(days) + ' days left';
  }
  function rate(v) { return v < 10 ? v.toFixed(1) : Math.round(v).toString(); }
  function short(hex) { return hex.length > 16 ? hex.slice(0, 16) + '…' : hex; }
  function deviceHref(tenant, device) {
    return '#/device/' + encodeURIComponent(tenant) + '/' + encodeURIComponent(device);
  }
  function status(text) { $('#status').textContent = text; }
  function notice(text, kind) { return h('p', { class: 'notice' + (kind ? ' ' + kind : '') }, text); }

  // ---- API -----------------------------------------------------------------------------
  function token() { return sessionStorage.getItem(TOKEN_KEY) || ''; }

  async function api(path, options = {}) {
    const mine = generation;
    const headers = { Accept: 'application/json' };
    if (options.body !== undefined) headers['Content-Type'] = 'application/json';
    if (token()) headers.Authorization = 'Bearer ' + token();
    const res = await fetch(path, {
      method: options.method || 'GET',
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      cache: 'no-store',
    });
    if (res.status === 401) throw new AuthError(token() ? 'wrong' : 'missing');
    let data = null;
    try { data = await res.json(); } catch (_) { data = null; }
    if (mine !== generation && !options.keep) throw new Stale();
    if (!res.ok) throw new Error((data && data.error) || 'HTTP ' + res.status);
    return data;
  }

  function showAuth(kind) {
    stopPolling();
    view.replaceChildren(h('h1', {}, 'No fleet data'),
      notice('The gateway answers only with a valid admin token.', 'error'));
    $('#auth').hidden = false;
    $('#forget').hidden = !token();
    $('#auth-message').textContent = kind === 'wrong'
      ? 'The gateway refused this token (wrong token): no fleet data is shown.'
      : 'This gateway requires an admin token: no fleet data is shown without it.';
    status('Not authorised.');
    $('#token').focus();
  }

  // Runs a view's loader; a refused token or an error is shown instead of its data.
  async function load(fn) {
    try {
      await fn();
      $('#auth').hidden = true;
      $('#forget').hidden = !token();
      status('Updated ' + fmtTime(Date.now() / 1000) + '.');
    } catch (e) {
      if (e instanceof Stale) return;
      if (e instanceof AuthError) { showAuth(e.message); return; }
      status('Error: ' + e.message);
    }
  }
  function every(ms, fn) {
    stopPolling();
    load(fn);
    timer = setInterval(() => load(fn), ms);
  }
  function stopPolling() { if (timer) clearInterval(timer); timer = null; }

  function confirmAction(title, text, okLabel) {
    const dialog = $('#confirm');
    $('#confirm-title').textContent = title;
    $('#confirm-text').textContent = text;
    $('#confirm-ok').textContent = okLabel;
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
      dialog.returnValue = 'cancel';
      dialog.showModal();
      $('#confirm-cancel').focus();
    });
  }

  async function kick(row, after) {
    const ok = await confirmAction('Kick ' + row.device + '?',
      'Close the live session of ' + row.device + ' (tenant ' + row.tenant + '). ' +
      'The device may reconnect unless its certificate is revoked.', 'Kick');
    if (!ok) return;
    try {
      const path = '/v1/sessions/' + encodeURIComponent(row.device) + '/kick?tenant=' +
        encodeURIComponent(row.tenant);
      const r = await api(path, { method: 'POST', keep: true });
      await new Promise((resolve) => setTimeout(resolve, 300));
      if (after) await load(after);
      status(r.forwarded
        ? 'Kicked ' + row.device + ': the kick went to ' + (row.gateway ? 'gateway ' + row.gateway : 'the gateway') +
          ' holding its session.'
        : 'Kicked ' + row.device + ': ' + r.kicked + (r.kicked === 1 ? ' session' : ' sessions') + ' closed.');
    } catch (e) {
      if (e instanceof AuthError) { showAuth(e.message); return; }
      status('Kick failed: ' + e.message);
    }
  }

  // ---- charts --------------------------------------------------------------------------
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    return [1, 2, 5, 10].map((m) => m * p).find((m) => m >= v);
  }

  function axis(v) { return Number.isInteger(v) ? String(v) : v.toFixed(1); }
  function ago(secs) { return secs >= 60 ? '−' + +(secs / 60).toFixed(1) + ' min' : '−' + Math.round(secs) + ' s'; }

  // series: [{ name, cls, values: [[t, v], ...] }]: the last five minutes, or since the
  // first sample when the gateway is younger (at least a minute). `fmt` formats a value.
  function lineChart(label, series, unit, fmt) {
    const W = 460, H = 170, L = 40, R = 8, T = 10, B = 24;
    const now = Date.now() / 1000;
    const first = Math.min(now, ...series.flatMap((x) => x.values.map((p) => p[0])));
    const span = Math.min(300, Math.max(60, now - first));
    const t0 = now - span;
    const ymax = niceMax(Math.max(0, ...series.flatMap((x) => x.values.map((p) => p[1]))));
    const x = (t) => L + ((t - t0) / span) * (W - L - R);
    const y = (v) => T + (1 - v / ymax) * (H - T - B);
    const last = (line) => (line.values.length ? line.values[line.values.length - 1][1] : 0);
    const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img',
      'aria-label': label + ', last ' + ago(span).slice(1) + '; now: ' +
        series.map((line) => line.name + ' ' + fmt(last(line)) + unit).join(', ') });
    for (const v of [0, ymax / 2, ymax]) {
      svg.append(s('line', { class: 'grid', x1: L, x2: W - R, y1: y(v), y2: y(v) }),
        s('text', { class: 'axis', x: L - 6, y: y(v) + 5, 'text-anchor': 'end' }, axis(v)));
    }
    for (const [t, text, anchor] of [[t0, ago(span), 'start'], [now - span / 2, ago(span / 2), 'middle'], [now, 'now', 'end']]) {
      svg.append(s('text', { class: 'axis', x: x(t), y: H - 4, 'text-anchor': anchor }, text));
    }
    for (const line of series) {
      const pts = line.values.filter((p) => p[0] >= t0)
        .map((p) => x(p[0]).toFixed(1) + ',' + y(p[1]).toFixed(1)).join(' ');
      svg.append(s('polyline', { class: line.cls, points: pts, 'data-series': line.name }));
    }
    const legend = h('ul', { class: 'legend' }, series.map((line) => h('li', {},
      h('span', { class: 'swatch ' + line.cls, 'aria-hidden': 'true' }), line.name + ': ',
      h('strong', {}, fmt(last(line))), unit)));
    return [svg, legend];
  }

  function barLabel(b) {
    if (b.from_days === null) return '≤ ' + b.to_days;
    if (b.to_days === null) return '> ' + b.from_days;
    return b.from_days + '–' + b.to_days;
  }

  function barChart(label, bars) {
    const W = 600, H = 210, L = 10, R = 10, T = 22, B = 40;
    const ymax = niceMax(Math.max(1, ...bars.map((b) => b.count)));
    const slot = (W - L - R) / bars.length;
    const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img',
      'aria-label': label + ': ' + bars.map((b) => barLabel(b) + ' days: ' + b.count).join('; ') });
    svg.append(s('line', { class: 'grid', x1: L, x2: W - R, y1: H - B, y2: H - B }));
    bars.forEach((b, i) => {
      const height = (b.count / ymax) * (H - T - B);
      const cx = L + slot * i + slot / 2;
      svg.append(
        s('rect', { class: 'bar', x: L + slot * i + 6, y: H - B - height, width: slot - 12,
          height: height, 'data-count': b.count, 'data-bucket': barLabel(b) }),
        s('text', { class: 'count', x: cx, y: H - B - height - 6, 'text-anchor': 'middle' }, b.count),
        s('text', { class: 'axis', x: cx, y: H - B + 16, 'text-anchor': 'middle' }, barLabel(b)));
    });
    svg.append(s('text', { class: 'axis', x: W / 2, y: H - 4, 'text-anchor': 'middle' }, 'days left'));
    return svg;
  }

  // ---- views ---------------------------------------------------------------------------
  const COLOURS = ['c1', 'c2', 'c3', 'c4', 'c5', 'c6'];

  function fleetView() {
    view.replaceChildren(h('h1', {}, 'Fleet now'), h('p', {}, 'Loading…'));
    every(2000, async () => {
      const st = await api('/v1/console/stats');
      const series = (pick) => st.points.map((p) => [p.t, pick(p)]);
      const tenants = Object.keys(st.sessions);
      const sessionSeries = tenants.map((t, i) => ({ name: t, cls: COLOURS[i % COLOURS.length],
        values: series((p) => p.sessions[t] || 0) }));
      view.replaceChildren(h('h1', {}, 'Fleet now'), h('div', { class: 'cards' },
        h('section', { class: 'card', 'aria-labelledby': 'c-sessions' },
          h('h2', { id: 'c-sessions' }, 'Sessions online by tenant'),
          h('p', { class: 'big', id: 'sessions-total' }, st.sessions_total),
          tenants.length ? lineChart('Sessions online by tenant', sessionSeries, '', String)
            : h('p', { class: 'muted' }, 'No sessions.')),
        st.cluster ? clusterCard(st.cluster) : null,
        h('section', { class: 'card', 'aria-labelledby': 'c-connects' },
          h('h2', { id: 'c-connects' }, 'Connects and refusals per second'),
          h('p', { class: 'muted' }, 'Since start: ' + st.connects_total + ' accepted, ' +
            st.refused_total + ' refused.'),
          lineChart('Connects and refusals per second', [
            { name: 'accepted', cls: 'c3', values: series((p) => p.connects) },
            { name: 'refused', cls: 'c5', values: series((p) => p.refusals) }], '/s', rate)),
        h('section', { class: 'card', 'aria-labelledby': 'c-messages' },
          h('h2', { id: 'c-messages' }, 'Messages per second'),
          h('p', { class: 'muted' }, 'Since start: ' + st.messages_in_total + ' in, ' +
            st.messages_out_total + ' out.'),
          lineChart('Messages per second', [
            { name: 'in', cls: 'c1', values: series((p) => p.messages_in) },
            { name: 'out', cls: 'c2', values: series((p) => p.messages_out) }], '/s', rate))));
    });
  }

  function gatewayName(r, here) {
    return r.gateway === here ? [r.gateway, ' ', h('span', { class: 'tag' }, 'this gateway')] : r.gateway;
  }

  function clusterCard(c) {
    return h('section', { class: 'card', 'aria-labelledby': 'c-cluster' },
      h('h2', { id: 'c-cluster' }, 'Cluster'),
      h('p', { class: 'big', id: 'cluster-total' }, c.sessions_total),
      h('p', { class: 'muted' }, 'Sessions on the ' + Object.keys(c.sessions).length +
        ' gateways alive; the other cards show this gateway (' + c.gateway + ').'),
      h('table', { id: 'gateways' },
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Gateway'), h('th', { scope: 'col' }, 'Sessions'))),
        h('tbody', {}, Object.entries(c.sessions).map(([g, n]) => h('tr', { 'data-gateway': g },
          td('Gateway', gatewayName({ gateway: g }, c.gateway)),
          td('Sessions', n))))));
  }

  function sessionRow(r, reload, here) {
    return h('tr', { 'data-device': r.device, 'data-gateway': r.gateway || '' },
      td('Device', h('a', { href: deviceHref(r.tenant, r.device) }, r.device),
        r.kind === 'service' ? [' ', h('span', { class: 'tag' }, 'service')] : null),
      td('Tenant', r.tenant),
      here ? td('Gateway', gatewayName(r, here)) : null,
      td('MQTT', r.protocol),
      td('Since', fmtTime(r.connected_at)),
      td('Peer', h('span', { class: 'mono' }, r.peer)),
      td('Serial', h('span', { class: 'mono' }, r.serial)),
      td('Fingerprint', h('span', { class: 'mono', title: r.fingerprint }, short(r.fingerprint))),
      td('Certificate', fmtTime(r.cert_not_after), h('br'), h('span', { class: 'muted' }, daysLeft(r.cert_not_after))),
      td('Action', h('button', { type: 'button', class: 'secondary kick',
        'aria-label': 'Kick ' + r.device, onclick: () => kick(r, reload) }, 'Kick')));
  }

  function devicesView() {
    const search = h('input', { id: 'search', type: 'search', value: devices.q,
      'aria-describedby': 'search-hint', autocomplete: 'off' });
    const count = h('p', { id: 'count', 'aria-live': 'polite' });
    const table = h('div');
    const pager = h('div', { class: 'row pager' });
    let pending = null;
    search.addEventListener('input', () => {
      clearTimeout(pending);
      pending = setTimeout(() => { devices.q = search.value; devices.offset = 0; refresh(); }, 250);
    });
    view.replaceChildren(h('h1', {}, 'Devices'),
      h('form', { role: 'search', onsubmit: (e) => { e.preventDefault(); devices.q = search.value; devices.offset = 0; refresh(); } },
        h('label', { for: 'search' }, 'Search live sessions'),
        h('div', { class: 'row' }, search, h('button', { type: 'submit' }, 'Search')),
        h('p', { id: 'search-hint', class: 'hint' }, 'Part of a device id, tenant, serial, fingerprint, peer address or gateway.')),
      count, table, pager);
    const draw = async () => {
      if (table.contains(document.activeElement) && document.activeElement.tagName === 'BUTTON') return;
      const p = await api('/v1/console/sessions?q=' + encodeURIComponent(devices.q) +
        '&offset=' + devices.offset + '&limit=' + devices.limit);
      count.textContent = p.total + (p.total === 1 ? ' live session matches.' : ' live sessions match.');
      table.replaceChildren(p.items.length === 0 ? notice('No live session matches.') :
        h('table', { class: 'stack', id: 'sessions' },
          h('caption', {}, p.gateway ? 'Live sessions on every gateway of the cluster, by tenant and device id'
            : 'Live sessions, by tenant and device id'),
          h('thead', {}, h('tr', {}, ['Device', 'Tenant', p.gateway ? 'Gateway' : null, 'MQTT', 'Since', 'Peer',
            'Serial', 'Fingerprint', 'Certificate expires', 'Action'].filter(Boolean)
            .map((c) => h('th', { scope: 'col' }, c)))),
          h('tbody', {}, p.items.map((r) => sessionRow(r, refresh, p.gateway)))));
      const last = Math.min(p.offset + p.items.length, p.total);
      pager.replaceChildren(
        h('button', { type: 'button', class: 'secondary', id: 'prev', disabled: p.offset === 0,
          onclick: () => { devices.offset = Math.max(0, p.offset - p.limit); refresh(); } }, '← Previous'),
        h('span', {}, p.total ? `${p.offset + 1}–${last} of ${p.total}` : ''),
        h('button', { type: 'button', class: 'secondary', id: 'next', disabled: last >= p.total,
          onclick: () => { devices.offset = p.offset + p.limit; refresh(); } }, 'Next →'));
    };
    const refresh = () => every(5000, draw);
    refresh();
  }

  function facts(pairs) {
    return h('dl', { class: 'facts' }, pairs.filter(Boolean).flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  }

  function auditTable(id, records, withDevice) {
    return h('table', { class: 'stack', id },
      h('thead', {}, h('tr', {}, ['Time', 'Event', 'Reason', 'What it means',
        withDevice ? 'Device' : null, 'Peer', 'Detail'].filter(Boolean)
        .map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, records.map((r) => h('tr', { 'data-reason': r.reason },
        td('Time', fmtTime(r.ts)), td('Event', r.event),
        td('Reason', h('code', {}, r.reason)),
        td('What it means', r.explanation || 'no explanation for this reason'),
        withDevice ? td('Device', r.device ? h('a', { href: deviceHref(r.tenant || '', r.device) }, r.device) : '—') : null,
        td('Peer', h('span', { class: 'mono' }, r.peer)), td('Detail', r.detail)))));
  }

  function deviceView(tenant, device) {
    view.replaceChildren(h('h1', {}, 'Device ' + device), h('p', {}, 'Loading…'));
    const stationPart = h('section', { 'aria-labelledby': 'h-station' });
    const draw = async () => {
      const d = await api('/v1/console/devices/' + encodeURIComponent(device) +
        (tenant ? '?tenant=' + encodeURIComponent(tenant) : ''));
      const s0 = d.sessions[0];
      view.replaceChildren(h('h1', {}, 'Device ' + device),
        h('p', {}, h('a', { href: '#/devices' }, '← All devices')),
        h('section', { 'aria-labelledby': 'h-session' }, h('h2', { id: 'h-session' }, 'Live session'),
          s0 ? [facts([['Tenant', s0.tenant], ['Kind', s0.kind],
            s0.gateway ? ['Gateway', h('span', { id: 'held-by' }, gatewayName(s0, d.gateway))] : null,
            ['MQTT version', s0.protocol],
            ['Peer', h('span', { class: 'mono' }, s0.peer)], ['Connected since', fmtTime(s0.connected_at)],
            ['Certificate serial', h('span', { class: 'mono' }, s0.serial)],
            ['Fingerprint (SHA-256)', h('span', { class: 'mono' }, s0.fingerprint)],
            ['Certificate expires', fmtTime(s0.cert_not_after) + ' (' + daysLeft(s0.cert_not_after) + ')']]),
          s0.gateway && s0.gateway !== d.gateway
            ? notice('Gateway ' + s0.gateway + ' holds this session: a Kick from here is sent to it.') : null,
          h('p', {}, h('button', { type: 'button', class: 'danger', id: 'kick',
            onclick: () => kick(s0, draw) }, 'Kick this session…'))]
            : notice('No live session: the device is not connected.')),
        h('section', { 'aria-labelledby': 'h-audit' }, h('h2', { id: 'h-audit' }, 'Audit records naming this device'),
          !d.audit.file ? notice('This gateway writes no audit file (audit_log in its config).')
            : d.audit.records.length ? auditTable('device-audit', d.audit.records, false)
              : notice('No audit record names this device.')),
        stationPart);
      drawStation(stationPart, d, device);
    };
    stopPolling();
    load(draw);
  }

  async function drawStation(part, d, device) {
    const title = h('h2', { id: 'h-station' }, 'Certificate history (station)');
    if (!d.station) {
      part.replaceChildren(title, notice(d.station_error ? 'The station is configured but unusable: ' +
        d.station_error : 'No station is configured for the console: certificate history and Revoke need ' +
        '[console] in the gateway config, with a fleet operator certificate (fleet-provision operator-cert); ' +
        'until then revoke on the station (fleet-provision revoke).'));
      return;
    }
    part.replaceChildren(title, h('p', { class: 'muted' }, 'Asking ' + d.station + '…'));
    let history = null, problem = null;
    try { history = await api('/v1/console/station/devices/' + encodeURIComponent(device)); } catch (e) {
      if (e instanceof AuthError) { showAuth(e.message); return; }
      if (e instanceof Stale) return;
      problem = e.message;
    }
    const reason = h('select', { id: 'revoke-reason' }, REVOCATION_REASONS.map((r) => h('option', { value: r }, r)));
    part.replaceChildren(title,
      problem ? notice(problem, 'error') : h('table', { class: 'stack', id: 'certificates' },
        h('thead', {}, h('tr', {}, ['Serial', 'Status', 'Issued', 'Expires', 'Revoked', 'Reason']
          .map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, history.certificates.map((c) => h('tr', {},
          td('Serial', h('span', { class: 'mono' }, c.serial)), td('Status', c.status),
          td('Issued', fmtTime(c.created_at)), td('Expires', c.not_after ? fmtTime(c.not_after) : '—'),
          td('Revoked', c.revoked_at ? fmtTime(c.revoked_at) : '—'), td('Reason', c.revocation_reason || '—'))))),
      h('form', { onsubmit: (e) => { e.preventDefault(); revoke(device, reason.value, d); } },
        h('label', { for: 'revoke-reason' }, 'Revocation reason'),
        h('div', { class: 'row' }, reason, h('button', { type: 'submit', class: 'danger' }, 'Revoke…'))));
  }

  async function revoke(device, reason, d) {
    const ok = await confirmAction('Revoke ' + device + '?', 'The station revokes every certificate of ' +
      device + ' (' + reason + ') and writes a new CRL; the gateway then closes its session and ' +
      'refuses it from now on. This cannot be undone.', 'Revoke');
    if (!ok) return;
    try {
      const r = await api('/v1/console/station/devices/' + encodeURIComponent(device) + '/revoke',
        { method: 'POST', body: { reason }, keep: true });
      status('Revoked ' + device + ': serials ' + (r.revoked_serials || []).join(', ') + '.');
    } catch (e) {
      if (e instanceof AuthError) { showAuth(e.message); return; }
      status('Revocation failed: ' + e.message);
    }
    drawStation($('[aria-labelledby="h-station"]'), d, device);
  }

  function certificatesView() {
    view.replaceChildren(h('h1', {}, 'Certificates'), h('p', {}, 'Loading…'));
    every(10000, async () => {
      const c = await api('/v1/console/certificates');
      view.replaceChildren(h('h1', {}, 'Certificates'),
        h('section', { class: 'card', 'aria-labelledby': 'h-expiry' },
          h('h2', { id: 'h-expiry' }, 'Connected clients by days until their certificate expires'),
          barChart('Connected clients by days left', c.buckets),
          h('table', { id: 'expiry-table' }, h('thead', {}, h('tr', {},
            h('th', { scope: 'col' }, 'Days left'), h('th', { scope: 'col', class: 'num' }, 'Clients'))),
          h('tbody', {}, c.buckets.map((b) => h('tr', {}, h('td', {}, barLabel(b)),
            h('td', { class: 'num' }, b.count)))))),
        h('section', { 'aria-labelledby': 'h-due' },
          h('h2', { id: 'h-due' }, 'Devices due for renewal'),
          h('p', {}, 'Connected devices whose certificate ends within ' + c.threshold_days + ' days (' +
            (c.threshold_configured ? '[renewal] threshold_days' : 'the default; no [renewal] configured') +
            '): ' + c.due_total + '.'),
          c.due.length ? h('table', { class: 'stack', id: 'due' },
            h('thead', {}, h('tr', {}, ['Device', 'Tenant', 'Expires', 'Left'].map((x) => h('th', { scope: 'col' }, x)))),
            h('tbody', {}, c.due.map((r) => h('tr', {},
              td('Device', h('a', { href: deviceHref(r.tenant, r.device) }, r.device)),
              td('Tenant', r.tenant), td('Expires', fmtTime(r.cert_not_after)),
              td('Left', daysLeft(r.cert_not_after))))))
            : notice('No connected device is due.')),
        c.station ? h('p', { class: 'muted' }, 'Certificate history and revocation: open a device (station ' + c.station + ').')
          : h('p', { class: 'muted' }, 'No station is configured for the console ([console] in the gateway config): certificate history and revocation are not available here.'));
    });
  }

  function refusalsView() {
    const reason = h('select', { id: 'reason' }, h('option', { value: '' }, 'All reasons'));
    const event = h('select', { id: 'event' }, [['refused', 'Refusals'], ['ended', 'Sessions the gateway ended'],
      ['suppressed', 'Rate-limit summaries'], ['', 'All records']].map(([v, t]) => h('option', { value: v, selected: v === refusals.event }, t)));
    const device = h('input', { id: 'device-filter', type: 'search', value: refusals.device, autocomplete: 'off' });
    const totals = h('div');
    const feed = h('div');
    const apply = () => {
      refusals.reason = reason.value; refusals.event = event.value; refusals.device = device.value.trim();
      every(5000, draw);
    };
    view.replaceChildren(h('h1', {}, 'Refusals'),
      h('form', { onsubmit: (e) => { e.preventDefault(); apply(); } },
        h('div', { class: 'cards' },
          h('div', {}, h('label', { for: 'reason' }, 'Reason'), reason),
          h('div', {}, h('label', { for: 'event' }, 'Records'), event),
          h('div', {}, h('label', { for: 'device-filter' }, 'Device id'), h('div', { class: 'row' }, device,
            h('button', { type: 'submit' }, 'Show'))))),
      totals, feed);
    reason.addEventListener('change', apply);
    event.addEventListener('change', apply);
    let explained = null;
    const draw = async () => {
      if (!explained) {
        explained = await api('/v1/console/reasons');
        reason.append(...explained.map((x) => h('option', { value: x.reason, title: x.text }, x.reason)));
        reason.value = refusals.reason;
      }
      const st = await api('/v1/console/stats');
      const q = new URLSearchParams({ limit: '200' });
      if (refusals.reason) q.set('reason', refusals.reason);
      if (refusals.event) q.set('event', refusals.event);
      if (refusals.device) q.set('device', refusals.device);
      const f = await api('/v1/audit?' + q);
      const counted = Object.entries(st.refused_by_reason).filter(([, n]) => n > 0);
      totals.replaceChildren(h('h2', {}, 'Refused since the gateway started'),
        counted.length ? h('ul', { id: 'refusal-totals' }, counted.map(([r, n]) => h('li', {},
          h('code', {}, r), ': ' + n + ' — ', explained.find((x) => x.reason === r)?.text || '')))
          : h('p', {}, 'None.'));
      feed.replaceChildren(h('h2', {}, 'Audit log, newest first'),
        !f.file ? notice('This gateway writes no audit file (audit_log in its config): only the counts above are known.')
          : f.records.length ? auditTable('feed', f.records, true) : notice('No matching record.'),
        f.file && !f.complete ? h('p', { class: 'muted' }, 'Only the newest ' +
          Math.round(f.scanned_bytes / 1024) + ' KiB of the audit file were read.') : '');
    };
    every(5000, draw);
  }

  // ---- routing -------------------------------------------------------------------------
  const routes = { fleet: fleetView, devices: devicesView, device: deviceView,
    certificates: certificatesView, refusals: refusalsView };

  function route() {
    generation += 1;
    stopPolling();
    const [name, ...args] = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
    const current = routes[name] ? name : 'fleet';
    for (const a of document.querySelectorAll('nav a')) {
      if (a.dataset.view === (current === 'device' ? 'devices' : current)) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    routes[current](...args);
  }

  $('#token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('#token').value.trim());
    $('#token').value = '';
    route();
    view.focus();
  });
  $('#forget').addEventListener('click', () => { sessionStorage.removeItem(TOKEN_KEY); route(); });
  window.addEventListener('hashchange', () => { route(); view.focus(); });
  route();
})();
