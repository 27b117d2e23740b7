// Markdown to DOM nodes, for a model's answers. Safe by construction: every piece of the model's
// text reaches the page as a text node (never innerHTML), and a link keeps only an http(s) URL.
// Covers what chat answers use: fenced code, headings, lists, quotes, paragraphs, `code`,
// **strong**, *emphasis* and [links](https://...). An unclosed fence (mid-stream) is code to the end.

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

const INLINE = /(`+)([^`]+?)\1|\*\*([^*]+?)\*\*|__([^_]+?)__|\*([^*\s][^*]*?)\*|_([^_\s][^_]*?)_|\[([^\]]+)\]\(([^)\s]+)\)/g;

export function safeUrl(href) {
  try {
    const url = new URL(href, "http://invalid.invalid/");
    return (url.protocol === "http:" || url.protocol === "https:") && url.host !== "invalid.invalid" ? url.href : null;
  } catch (_) {
    return null;
  }
}

export function inline(parent, text) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) parent.append(text.slice(last, m.index));
    if (m[2] !== undefined) parent.append(Object.assign(el("code"), { textContent: m[2] }));
    else if (m[3] !== undefined || m[4] !== undefined) inline(parent.appendChild(el("strong")), m[3] ?? m[4]);
    else if (m[5] !== undefined || m[6] !== undefined) inline(parent.appendChild(el("em")), m[5] ?? m[6]);
    else {
      const url = safeUrl(m[8]);
      if (url) {
        const a = parent.appendChild(el("a"));
        a.href = url;
        a.rel = "noopener noreferrer nofollow";
        a.target = "_blank";
        a.textContent = m[7];
      } else {
        parent.append(m[0]);
      }
    }
    last = m.index + m[0].length;
  }
  if (last < text.length) parent.append(text.slice(last));
}

function lines(parent, texts) {
  texts.forEach((t, i) => {
    if (i) parent.append(el("br"));
    inline(parent, t);
  });
}

export function render(markdown) {
  const out = document.createDocumentFragment();
  const src = markdown.replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < src.length) {
    const line = src[i];
    const fence = line.match(/^\s*(```|~~~)\s*([\w+-]*)/);
    if (fence) {
      const code = [];
      i++;
      while (i < src.length && !src[i].trim().startsWith(fence[1])) code.push(src[i++]);
      i++;
      const pre = out.appendChild(el("pre"));
      const c = pre.appendChild(el("code"));
      if (fence[2]) c.dataset.lang = fence[2];
      c.textContent = code.join("\n");
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    if (heading) {
      inline(out.appendChild(el(`h${Math.min(heading[1].length + 2, 6)}`)), heading[2]);
      i++;
      continue;
    }
    const item = /^\s*([-*+]|\d+[.)])\s+/;
    if (item.test(line)) {
      const ordered = /^\s*\d/.test(line);
      const list = out.appendChild(el(ordered ? "ol" : "ul"));
      while (i < src.length && item.test(src[i])) {
        inline(list.appendChild(el("li")), src[i].replace(item, ""));
        i++;
      }
      continue;
    }
    if (/^\s*>/.test(line)) {
      const quoted = [];
      while (i < src.length && /^\s*>/.test(src[i])) quoted.push(src[i++].replace(/^\s*>\s?/, ""));
      lines(out.appendChild(el("blockquote")), quoted);
      continue;
    }
    if (!line.trim()) {
      i++;
      continue;
    }
    const para = [];
    while (i < src.length && src[i].trim() && !/^\s*(```|~~~|#{1,6}\s|>|[-*+]\s|\d+[.)]\s)/.test(src[i])) {
      para.push(src[i++]);
    }
    if (!para.length) para.push(src[i++]);
    lines(out.appendChild(el("p")), para);
  }
  return out;
}
