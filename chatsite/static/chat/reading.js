// Telling the server how far the reader has read, and telling the reader about mentions.

const REPORT_MS = 800; // what was seen is reported at most this often

// The reader's position in the room, reported to `url` (POST, form field `seq`, CSRF header):
// at most one report in flight per REPORT_MS, none for a seq already reported, and the server
// keeps the highest it heard, so late or repeated reports are harmless.
export class ReadReporter {
  constructor(url, reported) {
    this.url = url;
    this.reported = reported; // the highest seq the server has confirmed
    this.wanted = reported;
    this.timer = null;
  }

  seen(seq) {
    if (seq > this.wanted) this.wanted = seq;
    if (this.wanted > this.reported && !this.timer) {
      this.timer = setTimeout(() => this.send(), REPORT_MS);
    }
  }

  // The page goes out of view or away: report now, not after the delay.
  flush() {
    if (!this.timer) return;
    clearTimeout(this.timer);
    this.send();
  }

  async send() {
    this.timer = null;
    const seq = this.wanted;
    if (seq <= this.reported) return;
    const body = new FormData();
    body.set("seq", String(seq));
    const token = document.querySelector("input[name=csrfmiddlewaretoken]");
    try {
      const response = await fetch(this.url, {
        method: "POST",
        body,
        headers: { "X-CSRFToken": token ? token.value : "" },
        keepalive: true, // a report made as the page goes away still arrives
      });
      if (response.ok) this.reported = Math.max(this.reported, (await response.json()).last_seq);
    } catch {
      // Not kept this time: the next message seen reports again.
    }
  }
}

export function notificationsWanted() {
  return "Notification" in window && Notification.permission === "granted";
}

// A system notification for a message that mentions the reader, unless they are looking.
export function notifyMention(record, room) {
  if (!notificationsWanted()) return;
  if (document.visibilityState === "visible" && document.hasFocus()) return;
  const note = new Notification(`${record.user} mentioned you in ${room.name}`, {
    body: record.body.slice(0, 200), // shown as text by the system
    tag: `chat-${room.slug}-${record.id}`,
  });
  note.addEventListener("click", () => {
    window.focus();
    note.close();
  });
}

// The "Notify me of mentions" button: shown while the browser has not been asked; it asks
// only when pressed (a user gesture), never on load. `allowed()` says whether the reader may
// chat at all; `say(text)` shows a notice.
export function notifyButton(button, allowed, say) {
  const render = () => {
    const supported = "Notification" in window;
    button.hidden = !supported || Notification.permission !== "default" || !allowed();
  };
  button.addEventListener("click", async () => {
    try {
      await Notification.requestPermission();
    } finally {
      render();
      if (Notification.permission === "denied") say("Notifications are blocked for this site.");
      if (Notification.permission === "granted") say("You will be notified of mentions.");
    }
  });
  return render;
}
