// @name completion in the composer, from the people online in the room.
//
// Typing "@" and the start of a name opens a list (an ARIA listbox the textarea controls):
// ArrowUp / ArrowDown choose, Enter or Tab take the choice, Escape closes the list. While the
// list is open these keys belong to it: Enter does not send the message.

const SHOWN = 8;
const TYPED = /(^|\s)@([^\s@]{0,40})$/u; // "@" then what has been typed of the name so far

export class MentionCompleter {
  constructor(area, list, candidates) {
    this.area = area;
    this.list = list;
    this.candidates = candidates; // () => names to offer
    this.options = [];
    this.active = 0;
    this.start = 0;
    area.setAttribute("aria-autocomplete", "list");
    area.setAttribute("aria-controls", list.id);
    area.setAttribute("aria-expanded", "false");
    area.addEventListener("input", () => this.update());
    area.addEventListener("keydown", (e) => this.onKey(e));
    area.addEventListener("blur", () => this.close());
  }

  get open() {
    return this.options.length > 0;
  }

  update() {
    const caret = this.area.selectionStart;
    const typed = TYPED.exec(this.area.value.slice(0, caret));
    if (!typed) {
      this.close();
      return;
    }
    const query = typed[2].toLowerCase();
    const options = this.candidates()
      .filter((name) => name.toLowerCase().startsWith(query))
      .sort((a, b) => a.localeCompare(b))
      .slice(0, SHOWN);
    if (!options.length) {
      this.close();
      return;
    }
    this.start = caret - typed[2].length - 1;
    this.options = options;
    this.active = Math.min(this.active, options.length - 1);
    this.render();
  }

  render() {
    this.list.replaceChildren(
      ...this.options.map((name, i) => {
        const li = document.createElement("li");
        li.id = `${this.list.id}-${i}`;
        li.setAttribute("role", "option");
        li.setAttribute("aria-selected", String(i === this.active));
        li.textContent = name;
        // mousedown, not click: the textarea keeps its focus and caret.
        li.addEventListener("mousedown", (e) => {
          e.preventDefault();
          this.pick(i);
        });
        return li;
      }),
    );
    this.list.hidden = false;
    this.area.setAttribute("aria-expanded", "true");
    this.area.setAttribute("aria-activedescendant", `${this.list.id}-${this.active}`);
  }

  close() {
    if (!this.options.length && this.list.hidden) return;
    this.options = [];
    this.active = 0;
    this.list.hidden = true;
    this.list.replaceChildren();
    this.area.setAttribute("aria-expanded", "false");
    this.area.removeAttribute("aria-activedescendant");
  }

  onKey(e) {
    if (!this.open || e.isComposing) return;
    const step = { ArrowDown: 1, ArrowUp: -1 }[e.key];
    if (step) {
      this.active = (this.active + step + this.options.length) % this.options.length;
      this.render();
    } else if ((e.key === "Enter" && !e.shiftKey) || e.key === "Tab") {
      this.pick(this.active);
    } else if (e.key === "Escape") {
      this.close();
    } else {
      return;
    }
    e.preventDefault();
    e.stopImmediatePropagation(); // the composer's own Enter handler does not see it
  }

  pick(i) {
    const name = this.options[i];
    if (name === undefined) return;
    const { value, selectionStart: caret } = this.area;
    const inserted = `@${name} `;
    this.area.value = value.slice(0, this.start) + inserted + value.slice(caret);
    const at = this.start + inserted.length;
    this.area.setSelectionRange(at, at);
    this.close();
    this.area.focus();
    this.area.dispatchEvent(new Event("input", { bubbles: true }));
  }
}
