(function () {
  var slider = document.getElementById("opacity");
  if (slider) {
    slider.addEventListener("input", function () {
      document.querySelectorAll("img.overlay").forEach(function (img) {
        img.style.opacity = String(Number(slider.value) / 100);
      });
    });
  }
  var lung = document.getElementById("lung-window");
  if (lung) {
    lung.addEventListener("change", function () {
      document.querySelectorAll("img.slice[data-lung]").forEach(function (img) {
        img.src = lung.checked ? img.dataset.lung : img.dataset.mediastinal;
      });
    });
  }
  var dialog = document.getElementById("enlarged");
  document.querySelectorAll(".stack").forEach(function (stack) {
    stack.addEventListener("click", function () {
      if (!dialog) { return; }
      var large = dialog.querySelector(".stack");
      large.replaceChildren.apply(large, Array.from(stack.children).map(function (img) {
        return img.cloneNode(true);
      }));
      dialog.showModal();
    });
  });
})();
