// The keyboard grid the error page and the label-review campaign share: cards in reading order, one of them
// selected, arrow keys move the selection (up and down by a row as the grid is laid out at the time), and keys
// typed into a field are left to the field. Each page says what its other keys do and what selecting a card shows.
(function () {
  "use strict";
  window.errorbook = window.errorbook || {};

  // options: grid (the element), card (selector of a card), idPrefix (a card's id is idPrefix + data-image-id),
  // onSelect(card) after a card is selected, onKey(key) -> true when the page handled the key,
  // onTypingKey(event, field) for keys other than Escape pressed in a field.
  window.errorbook.keyboardGrid = function (options) {
    var grid = options.grid;
    var selectedId = null;

    function cards() {
      return Array.prototype.slice.call(grid.querySelectorAll(options.card));
    }

    function cardById(id) {
      return id === null ? null : document.getElementById(options.idPrefix + id);
    }

    function markSelected(card) {
      card.classList.add("selected");
      card.setAttribute("aria-current", "true");
    }

    function select(card, scroll) {
      if (!card) {
        return;
      }
      var previous = cardById(selectedId);
      if (previous) {
        previous.classList.remove("selected");
        previous.removeAttribute("aria-current");
      }
      selectedId = card.getAttribute("data-image-id");
      markSelected(card);
      if (scroll) {
        card.scrollIntoView({ block: "nearest" });
      }
      if (options.onSelect) {
        options.onSelect(card);
      }
    }

    function columns(list) {
      if (list.length === 0) {
        return 1;
      }
      var top = list[0].offsetTop;
      var count = 0;
      while (count < list.length && list[count].offsetTop === top) {
        count += 1;
      }
      return Math.max(count, 1);
    }

    function move(step) {
      var list = cards();
      if (list.length === 0) {
        return;
      }
      var index = list.indexOf(cardById(selectedId));
      var next = index < 0 ? 0 : Math.min(Math.max(index + step, 0), list.length - 1);
      select(list[next], true);
    }

    document.addEventListener("keydown", function (event) {
      if (event.ctrlKey || event.metaKey || event.altKey) {
        return;
      }
      var target = event.target;
      var typing = target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" ||
        target.tagName === "SELECT" || target.isContentEditable);
      if (typing) {
        if (event.key === "Escape") {
          target.blur();
        } else if (options.onTypingKey) {
          options.onTypingKey(event, target);
        }
        return;
      }
      var key = event.key;
      if (key === "ArrowRight") {
        move(1);
      } else if (key === "ArrowLeft") {
        move(-1);
      } else if (key === "ArrowDown") {
        move(columns(cards()));
      } else if (key === "ArrowUp") {
        move(-columns(cards()));
      } else if (!options.onKey || !options.onKey(key)) {
        return;
      }
      event.preventDefault();
    });

    return {
      cards: cards,
      cardById: cardById,
      markSelected: markSelected,
      select: select,
      selectedId: function () {
        return selectedId;
      },
    };
  };
})();
