// Cocoon's only script: live install progress on the software page.
// Without it the page still works: the forms post and come back, and
// "refresh" reloads. No framework, no inline code (the CSP forbids it).
(function () {
  'use strict';
  var list = document.getElementById('software');
  if (!list || !window.EventSource || !window.fetch) return;
  var live = document.getElementById('live');
  var notice = document.getElementById('notice');
  var csrf = list.getAttribute('data-csrf') || '';

  function announce(text) {
    if (live) live.textContent = text;
  }

  function showNotice(text) {
    if (!notice) return;
    notice.textContent = text;
    notice.hidden = false;
  }

  function updatedAt(item) {
    var t = item.install ? Date.parse(item.install.updated_at) : 0;
    return isNaN(t) ? 0 : t;
  }

  function actionForm(item, button) {
    var form = document.createElement('form');
    form.method = 'post';
    form.action = '/software/' + item.version_id + '/' + button.action;
    var token = document.createElement('input');
    token.type = 'hidden';
    token.name = 'csrf';
    token.value = csrf;
    var submit = document.createElement('button');
    submit.type = 'submit';
    submit.className = 'button ' + button.action;
    submit.textContent = button.label;
    form.append(token, submit);
    return form;
  }

  // Brings one row up to date with an item from the server (the event
  // stream or an action's answer). An answer older than what the row
  // shows is ignored, so a slow response never rolls the row back.
  function render(item) {
    var row = document.getElementById('sw-' + item.version_id);
    if (!row || !item.display) return;
    var at = updatedAt(item);
    var shown = Number(row.getAttribute('data-updated') || '0');
    if (at < shown) return;
    row.setAttribute('data-updated', String(at));
    var d = item.display;

    var status = row.querySelector('.status-text');
    var before = status.getAttribute('data-status');
    status.textContent = d.status_text;
    status.setAttribute('data-status', d.status);
    status.classList.toggle('failed', !!d.failed);

    var slot = row.querySelector('.progress-slot');
    slot.replaceChildren();
    if (d.progress) {
      var bar = document.createElement('progress');
      bar.setAttribute('aria-label', item.name + ' progress');
      if (d.progress.value != null && d.progress.max) {
        bar.max = d.progress.max;
        bar.value = d.progress.value;
        bar.textContent = Math.floor((100 * d.progress.value) / d.progress.max) + '%';
      } else {
        bar.textContent = 'Working';
      }
      slot.append(bar);
    }

    var actions = row.querySelector('.actions');
    var wanted = d.buttons.map(function (b) { return b.label; }).join('\n');
    var current = Array.prototype.map
      .call(actions.querySelectorAll('button'), function (b) { return b.textContent; })
      .join('\n');
    if (wanted !== current) {
      var hadFocus = actions.contains(document.activeElement);
      actions.replaceChildren.apply(actions, d.buttons.map(function (b) { return actionForm(item, b); }));
      if (hadFocus) {
        var next = actions.querySelector('button') || row.querySelector('h2');
        if (next.tagName === 'H2') next.setAttribute('tabindex', '-1');
        next.focus();
      }
    }
    if (before !== d.status) announce(item.name + ': ' + d.status_text);
  }

  list.addEventListener('submit', function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement)) return;
    event.preventDefault();
    var button = form.querySelector('button');
    if (button) button.disabled = true;
    fetch(form.action, {
      method: 'POST',
      headers: { Accept: 'application/json' },
      body: new URLSearchParams(new FormData(form)),
      credentials: 'same-origin'
    })
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (response.ok) {
            if (notice) notice.hidden = true;
            render(body);
          } else if (response.status === 401) {
            window.location.reload();
          } else {
            showNotice(body.message || 'That did not work. Refresh the page and try again.');
          }
        });
      })
      .catch(function () {
        showNotice('The portal could not be reached. Check your connection and try again.');
      })
      .finally(function () {
        if (button && button.isConnected) button.disabled = false;
      });
  });

  var events = new EventSource('/software/events');
  events.addEventListener('software', function (event) {
    try {
      render(JSON.parse(event.data));
    } catch (e) {
      // A malformed event changes nothing; the next one will.
    }
  });
  events.addEventListener('expired', function () {
    events.close();
    window.location.reload();
  });
  events.onerror = function () {
    if (events.readyState === EventSource.CLOSED) {
      showNotice('Live updates stopped. Refresh the page to see the latest state.');
    }
  };
})();
