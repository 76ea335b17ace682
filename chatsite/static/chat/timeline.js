// The separators between messages: one line per day ("Today", "Yesterday", a date) and the
// "New messages" line above the first message from someone else after the reader's position.
//
// They are derived from the messages, never stored: `decorate` removes them and draws them
// again in one pass over the list, so messages can arrive at the end, be loaded at the top,
// or be placed late (an own send) without any separator ending up in the wrong place.

const DAY_MS = 86_400_000;

function startOfDay(date) {
  return new Date(date.getFullYear(), date.getMonth(), date.getDate()).getTime();
}

export function dayLabel(ts, now = Date.now()) {
  const date = new Date(ts);
  const days = Math.round((startOfDay(new Date(now)) - startOfDay(date)) / DAY_MS);
  if (days === 0) return "Today";
  if (days === 1) return "Yesterday";
  const sameYear = date.getFullYear() === new Date(now).getFullYear();
  return date.toLocaleDateString([], {
    weekday: "long",
    day: "numeric",
    month: "long",
    ...(sameYear ? {} : { year: "numeric" }),
  });
}

function separator(className, text) {
  const li = document.createElement("li");
  li.className = className;
  li.setAttribute("role", "separator");
  li.setAttribute("aria-label", text);
  const span = document.createElement("span");
  span.textContent = text;
  li.append(span);
  return li;
}

// `recordOf(node)` gives a message node's record ({seq, ts, own}); `newAfter` is the seq after
// which others' messages are new (null: no line). Returns the "new messages" line, if drawn.
export function decorate(list, recordOf, newAfter) {
  for (const old of list.querySelectorAll(":scope > .day, :scope > .divider")) old.remove();
  let lastDay = null;
  let divider = null;
  for (const node of [...list.children]) {
    const r = recordOf(node);
    if (!r) continue;
    const day = startOfDay(new Date(r.ts));
    if (day !== lastDay) {
      node.before(separator("day", dayLabel(r.ts)));
      lastDay = day;
    }
    if (!divider && newAfter !== null && r.seq && r.seq > newAfter && !r.own) {
      divider = separator("divider", "New messages");
      divider.id = "new-messages";
      node.before(divider);
    }
  }
  return divider;
}
