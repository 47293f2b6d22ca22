// Small helpers the views share.

// Makes an element: el('button', {className: 'x', onclick: f}, 'label', child, ...).
// Properties go onto the element as they are; `dataset` entries become data-* attributes.
export function el(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === 'dataset') Object.assign(element.dataset, value);
    else element[key] = value;
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== '') element.append(child);
  }
  return element;
}

export function clear(element) {
  while (element.firstChild) element.firstChild.remove();
}

// A loss to 4 decimals, or a dash when there is none.
export function fmt(value, digits = 4) {
  return value === null || value === undefined ? '–' : Number(value).toFixed(digits);
}

// 1h 02m, 4m 05s, 12 s.
export function duration(seconds) {
  if (!(seconds > 0) || !Number.isFinite(seconds)) return '?';
  const s = Math.round(seconds);
  if (s >= 3600) return `${Math.floor(s / 3600)}h ${String(Math.floor(s / 60) % 60).padStart(2, '0')}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  return `${s} s`;
}

export function rate(tokensPerSecond) {
  return tokensPerSecond >= 1000
    ? `${(tokensPerSecond / 1000).toFixed(1)}k tok/s`
    : `${Math.round(tokensPerSecond)} tok/s`;
}
