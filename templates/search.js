// Client-side search over packages.json: [name, description, downloads in
// the last 30 days, downloads all time], most downloaded first.
(function () {
  "use strict";
  var input = document.getElementById("search");
  var results = document.getElementById("results");
  var status = document.getElementById("search-status");
  var packages = [];
  var LIMIT = 100;

  function canonical(text) {
    return text.toLowerCase().replace(/[-_.]+/g, "-");
  }

  function show() {
    var query = canonical(input.value.trim());
    results.textContent = "";
    if (!query) {
      status.textContent = packages.length.toLocaleString() +
        " packages; type to search.";
      return;
    }
    var exact = [], names = [], descriptions = [];
    for (var i = 0; i < packages.length; i++) {
      var entry = packages[i];
      if (entry[0] === query) exact.push(entry);
      else if (entry[0].indexOf(query) !== -1) names.push(entry);
      else if (entry[1] && entry[1].toLowerCase().indexOf(query) !== -1)
        descriptions.push(entry);
    }
    var found = exact.concat(names, descriptions);
    status.textContent = found.length.toLocaleString() +
      (found.length === 1 ? " package found" : " packages found") +
      (found.length > LIMIT ? "; the " + LIMIT + " most downloaded:" : "");
    found.slice(0, LIMIT).forEach(function (entry) {
      var item = document.createElement("li");
      var link = document.createElement("a");
      link.href = "/project/" + encodeURIComponent(entry[0]) + "/";
      link.textContent = entry[0];
      link.className = "package";
      item.appendChild(link);
      if (entry[1]) {
        var text = document.createElement("span");
        text.className = "summary";
        text.textContent = " " + entry[1];
        item.appendChild(text);
      }
      var count = document.createElement("span");
      count.className = "downloads";
      count.textContent = " · " + entry[2].toLocaleString() +
        " downloads in the last 30 days";
      item.appendChild(count);
      results.appendChild(item);
    });
  }

  var query = new URLSearchParams(window.location.search).get("q");
  if (query) input.value = query;
  input.addEventListener("input", show);
  fetch("/packages.json").then(function (response) {
    if (!response.ok) throw new Error(response.status);
    return response.json();
  }).then(function (data) {
    packages = data;
    document.body.setAttribute("data-search-ready", "true");
    show();
  }).catch(function (error) {
    status.textContent = "The package list could not be loaded (" +
      error + ").";
  });
})();
