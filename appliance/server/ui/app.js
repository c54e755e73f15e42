// The chat page's script: same-origin fetches to the native API, history in localStorage.
// No remote code, no dependencies: it is inlined into the page, allowed by its hash in the CSP.
"use strict";
(() => {
  const STORE = {
    conversations: "ollama-ui.conversations",
    current: "ollama-ui.current",
    model: "ollama-ui.model",
    key: "ollama-ui.apiKey",
  };
  const JSON_HEADERS = { "Content-Type": "application/json" };
  const $ = (id) => document.getElementById(id);
  const els = {
    newChat: $("new-chat"), conversations: $("conversations"), model: $("model"), status: $("status"),
    messages: $("messages"), composer: $("composer"), prompt: $("prompt"), attachments: $("attachments"),
    attachLabel: $("attach-label"), attach: $("attach"), send: $("send"), stop: $("stop"),
    keyDialog: $("key-dialog"), keyForm: $("key-form"), keyInput: $("key-input"), keyError: $("key-error"),
  };

  let conversations = loadConversations();
  let currentId = localStorage.getItem(STORE.current);
  let controller = null; // the AbortController of the reply being streamed, if any
  let pendingImages = []; // base64 (no data: prefix) for the next user message
  let keyWaiters = null; // resolvers waiting for the API key dialog

  // -- storage ----------------------------------------------------------------------------------

  function loadConversations() {
    try {
      const stored = JSON.parse(localStorage.getItem(STORE.conversations) || "[]");
      return Array.isArray(stored) ? stored.filter((c) => c && Array.isArray(c.messages)) : [];
    } catch {
      return [];
    }
  }

  function saveConversations() {
    const slim = (list) => list.map((c) => ({
      ...c, messages: c.messages.map(({ images, ...m }) => (images ? { ...m, imagesDropped: images.length } : m)),
    }));
    try {
      localStorage.setItem(STORE.conversations, JSON.stringify(conversations));
    } catch (err) {
      // Images fill the browser's quota first: keep every conversation's text, drop stored images.
      try {
        localStorage.setItem(STORE.conversations, JSON.stringify(slim(conversations)));
        setStatus("browser storage is full: attached images were not kept in the history", true);
      } catch {
        setStatus("cannot save the history: " + err.message, true);
      }
    }
  }

  function currentConversation() {
    return conversations.find((c) => c.id === currentId) || null;
  }

  function newId() {
    return Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
  }

  // -- API --------------------------------------------------------------------------------------

  async function errorText(response) {
    const text = await response.text();
    try {
      return JSON.parse(text).error || text || response.statusText;
    } catch {
      return text || response.statusText;
    }
  }

  // fetch with the stored API key; a 401 asks for a key and tries again.
  async function api(path, init = {}) {
    for (;;) {
      const headers = new Headers(init.headers || {});
      const key = localStorage.getItem(STORE.key);
      if (key) headers.set("Authorization", "Bearer " + key);
      const response = await fetch(path, { ...init, headers, credentials: "same-origin" });
      if (response.status !== 401) return response;
      const reason = await errorText(response);
      await askForKey(key ? "The key was refused (" + reason + ")." : "");
    }
  }

  function askForKey(message) {
    if (!keyWaiters) {
      keyWaiters = [];
      els.keyError.textContent = message;
      els.keyInput.value = "";
      els.keyDialog.showModal();
    }
    return new Promise((resolve) => keyWaiters.push(resolve));
  }

  els.keyDialog.addEventListener("cancel", (event) => event.preventDefault()); // requests wait on it
  els.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = els.keyInput.value.trim();
    if (!key) return;
    localStorage.setItem(STORE.key, key);
    els.keyDialog.close();
    const waiters = keyWaiters || [];
    keyWaiters = null;
    waiters.forEach((resolve) => resolve());
  });

  async function loadModels() {
    let models;
    try {
      const response = await api("/api/tags");
      if (!response.ok) throw new Error(await errorText(response));
      models = (await response.json()).models || [];
    } catch (err) {
      setStatus("cannot list the models: " + err.message, true);
      return;
    }
    els.model.replaceChildren(...models.map((m) => new Option(m.name, m.name)));
    if (!models.length) {
      setStatus("no models yet: ollama pull <name>, then reload", true);
      return;
    }
    const wanted = currentConversation()?.model || localStorage.getItem(STORE.model);
    if (wanted && models.some((m) => m.name === wanted)) els.model.value = wanted;
    await modelChanged();
  }

  async function modelChanged() {
    const model = els.model.value;
    if (!model) return;
    localStorage.setItem(STORE.model, model);
    let capabilities = [];
    try {
      const response = await api("/api/show", { method: "POST", headers: JSON_HEADERS, body: JSON.stringify({ model }) });
      if (response.ok) capabilities = (await response.json()).capabilities || [];
    } catch {
      // the picker still works; only the image button depends on this
    }
    if (els.model.value !== model) return; // another model was picked meanwhile
    els.model.dataset.capabilities = capabilities.join(" ");
    els.model.dataset.shown = model; // the model these capabilities are of
    const vision = capabilities.includes("vision");
    els.attachLabel.hidden = !vision;
    if (!vision && pendingImages.length) {
      pendingImages = [];
      renderAttachments();
    }
    setStatus("");
  }

  // -- rendering --------------------------------------------------------------------------------

  function escapeHtml(text) {
    const entities = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
    return text.replace(/[&<>"']/g, (c) => entities[c]);
  }

  // Markdown's code only: the text is escaped first, then ``` fences become <pre><code> blocks (an
  // unclosed fence, as while streaming, runs to the end) and `spans` become <code>.
  function renderMarkdown(text) {
    const html = [];
    let prose = [];
    let code = null;
    let lang = "";
    const flushProse = (beforeCode) => {
      // A code block is a block of its own: the line break that leads into or out of it is dropped.
      let text = prose.join("\n");
      if (html.length) text = text.replace(/^\n/, "");
      if (beforeCode) text = text.replace(/\n$/, "");
      if (text) html.push(text.replace(/`([^`\n]+)`/g, "<code>$1</code>"));
      prose = [];
    };
    const flushCode = () => {
      html.push('<pre class="code"><code data-lang="' + lang + '">' + code.join("\n") + "</code></pre>");
      code = null;
    };
    for (const line of escapeHtml(text).split("\n")) {
      const fence = /^\s*```(.*)$/.exec(line);
      if (code === null && fence) {
        flushProse(true);
        code = [];
        lang = fence[1].trim().replace(/[^\w+#.-]/g, "").slice(0, 32);
      } else if (code !== null && fence && !fence[1].trim()) {
        flushCode();
      } else if (code !== null) {
        code.push(line);
      } else {
        prose.push(line);
      }
    }
    flushProse(false);
    if (code !== null) flushCode();
    return html.join("");
  }

  function imageType(base64) {
    const magic = [["iVBOR", "png"], ["/9j/", "jpeg"], ["R0lG", "gif"], ["UklGR", "webp"], ["Qk", "bmp"]];
    const found = magic.find(([prefix]) => base64.startsWith(prefix));
    return "image/" + (found ? found[1] : "png");
  }

  function imageElement(base64, alt) {
    const img = document.createElement("img");
    img.src = "data:" + imageType(base64) + ";base64," + base64;
    img.alt = alt;
    return img;
  }

  function messageElement(message) {
    const el = document.createElement("article");
    el.className = "message " + message.role;
    const body = document.createElement("div");
    body.className = "body";
    el.append(body);
    for (const image of message.images || []) el.append(imageElement(image, "attached image"));
    updateMessageElement(el, message);
    return el;
  }

  function updateMessageElement(el, message) {
    el.dataset.state = message.state || "done";
    el.classList.toggle("error", message.state === "error");
    el.querySelector(".body").innerHTML = renderMarkdown(message.content || "");
    el.querySelector(".thinking")?.remove();
    if (message.thinking) {
      const details = document.createElement("details");
      details.className = "thinking";
      const summary = document.createElement("summary");
      summary.textContent = "Thinking";
      const text = document.createElement("div");
      text.className = "body";
      text.textContent = message.thinking;
      details.append(summary, text);
      el.prepend(details);
    }
    el.querySelector(".note")?.remove();
    const note = messageNote(message);
    if (note) {
      const noteEl = document.createElement("div");
      noteEl.className = "note";
      noteEl.textContent = note;
      el.append(noteEl);
    }
  }

  function messageNote(message) {
    if (message.state === "stopped") return "stopped";
    if (message.state === "error") return "error: " + message.error;
    if (message.imagesDropped) return message.imagesDropped + " image(s) not kept in the history";
    if (message.stats && message.stats.eval_duration > 0) {
      const rate = message.stats.eval_count / (message.stats.eval_duration / 1e9);
      return message.stats.eval_count + " tokens, " + rate.toFixed(1) + " tokens/s";
    }
    return "";
  }

  function renderMessages() {
    const conversation = currentConversation();
    els.messages.replaceChildren(...(conversation ? conversation.messages.map(messageElement) : []));
    scrollToEnd();
  }

  function renderConversations() {
    const items = [...conversations].sort((a, b) => b.updated - a.updated).map((conversation) => {
      const li = document.createElement("li");
      li.classList.toggle("current", conversation.id === currentId);
      const open = document.createElement("button");
      open.type = "button";
      open.className = "open";
      open.textContent = conversation.title || "New chat";
      open.title = conversation.title || "";
      open.addEventListener("click", () => switchTo(conversation.id));
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "delete";
      remove.textContent = "\u00d7";
      remove.setAttribute("aria-label", "Delete this conversation");
      remove.addEventListener("click", () => deleteConversation(conversation.id));
      li.append(open, remove);
      return li;
    });
    els.conversations.replaceChildren(...items);
  }

  function renderAttachments() {
    els.attachments.replaceChildren(...pendingImages.map((image, index) => {
      const img = imageElement(image, "image to send (click to remove)");
      img.title = "click to remove";
      img.addEventListener("click", () => {
        pendingImages.splice(index, 1);
        renderAttachments();
      });
      return img;
    }));
  }

  function scrollToEnd() {
    els.messages.scrollTop = els.messages.scrollHeight;
  }

  function setStatus(text, isError = false) {
    els.status.textContent = text;
    els.status.classList.toggle("error", isError);
  }

  function setBusy(busy) {
    els.send.hidden = busy;
    els.stop.hidden = !busy;
    els.model.disabled = busy;
    els.newChat.disabled = busy;
  }

  // -- conversations ----------------------------------------------------------------------------

  function switchTo(id) {
    if (controller) return;
    currentId = id;
    localStorage.setItem(STORE.current, id);
    const model = currentConversation()?.model;
    if (model && [...els.model.options].some((o) => o.value === model) && els.model.value !== model) {
      els.model.value = model;
      modelChanged();
    }
    renderConversations();
    renderMessages();
  }

  function newChat() {
    if (controller) return;
    currentId = null;
    localStorage.removeItem(STORE.current);
    renderConversations();
    renderMessages();
    els.prompt.focus();
  }

  function deleteConversation(id) {
    if (controller) return;
    conversations = conversations.filter((c) => c.id !== id);
    saveConversations();
    if (id === currentId) newChat();
    else renderConversations();
  }

  // -- chatting ---------------------------------------------------------------------------------

  async function send() {
    const text = els.prompt.value;
    const model = els.model.value;
    if (controller || (!text.trim() && !pendingImages.length)) return;
    if (!model) {
      setStatus("pick a model first", true);
      return;
    }
    let conversation = currentConversation();
    if (!conversation) {
      conversation = { id: newId(), title: text.trim().slice(0, 60) || "Image", model, messages: [], updated: 0 };
      conversations.push(conversation);
      currentId = conversation.id;
      localStorage.setItem(STORE.current, currentId);
    }
    const question = { role: "user", content: text };
    if (pendingImages.length) question.images = pendingImages;
    const reply = { role: "assistant", content: "", state: "streaming" };
    conversation.messages.push(question, reply);
    conversation.model = model;
    conversation.updated = Date.now();
    pendingImages = [];
    els.prompt.value = "";
    renderAttachments();
    saveConversations();
    renderConversations();
    renderMessages();
    const replyEl = els.messages.lastElementChild;
    controller = new AbortController();
    setBusy(true);
    setStatus("");
    try {
      await streamChat(model, conversation.messages.slice(0, -1), reply, replyEl, controller.signal);
      reply.state = "done";
    } catch (err) {
      if (err.name === "AbortError") {
        reply.state = "stopped";
      } else {
        reply.state = "error";
        reply.error = err.message;
      }
    } finally {
      controller = null;
      setBusy(false);
      conversation.updated = Date.now();
      updateMessageElement(replyEl, reply);
      saveConversations();
    }
  }

  async function streamChat(model, history, reply, replyEl, signal) {
    const messages = history.filter((m) => m.state !== "error").map((m) => (
      m.images ? { role: m.role, content: m.content, images: m.images } : { role: m.role, content: m.content }
    ));
    const response = await api("/api/chat", {
      method: "POST", headers: JSON_HEADERS, body: JSON.stringify({ model, messages, stream: true }), signal,
    });
    if (!response.ok) throw new Error(await errorText(response));
    const handle = (line) => {
      if (!line.trim()) return;
      const chunk = JSON.parse(line);
      if (chunk.error) throw new Error(chunk.error);
      const delta = chunk.message || {};
      if (delta.content) reply.content += delta.content;
      if (delta.thinking) reply.thinking = (reply.thinking || "") + delta.thinking;
      if (chunk.done) reply.stats = { eval_count: chunk.eval_count, eval_duration: chunk.eval_duration };
    };
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read(); // rejects with an AbortError when stopped
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      const lines = buffered.split("\n");
      buffered = lines.pop();
      lines.forEach(handle);
      updateMessageElement(replyEl, reply);
      scrollToEnd();
    }
    handle(buffered + decoder.decode());
  }

  function readAsBase64(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1));
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  // -- wiring -----------------------------------------------------------------------------------

  els.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  els.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  els.stop.addEventListener("click", () => controller?.abort());
  els.newChat.addEventListener("click", newChat);
  els.model.addEventListener("change", modelChanged);
  els.attach.addEventListener("change", async () => {
    try {
      for (const file of els.attach.files) pendingImages.push(await readAsBase64(file));
    } catch (err) {
      setStatus("cannot read the image: " + err.message, true);
    }
    els.attach.value = "";
    renderAttachments();
  });

  renderConversations();
  renderMessages();
  loadModels();
})();
