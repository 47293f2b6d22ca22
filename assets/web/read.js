// A file of the project, as the binary holds it (/source/FILE), with line numbers; the lines
// from the first one containing ?find=TEXT to the end of its paragraph (Markdown) or of its
// function (Rust: the closing brace at the same indentation) are marked and scrolled to.

const params = new URLSearchParams(location.search);
const file = params.get('file') || 'README.md';
const find = params.get('find') || '';

function extent(lines, start) {
  if (file.endsWith('.md')) {
    let end = start;
    while (end + 1 < lines.length && lines[end + 1].trim() !== '') end += 1;
    return end;
  }
  const indent = lines[start].match(/^\s*/)[0];
  for (let end = start; end < lines.length; end++) {
    if (lines[end] === `${indent}}`) return end;
    if (end > start && lines[end].startsWith(`${indent}}`)) return end;
  }
  return start;
}

async function main() {
  document.querySelector('#read-file').textContent = file;
  const response = await fetch(`source/${file}`);
  const pre = document.querySelector('#read-text');
  if (!response.ok) {
    document.querySelector('#read-note').textContent = `cannot show ${file} (${response.status})`;
    return;
  }
  const lines = (await response.text()).split('\n');
  const start = find ? lines.findIndex((l) => l.includes(find)) : -1;
  const end = start >= 0 ? extent(lines, start) : -1;
  const width = String(lines.length).length;
  lines.forEach((line, i) => {
    const row = document.createElement('span');
    row.className = i >= start && i <= end ? 'line marked' : 'line';
    row.id = `L${i + 1}`;
    const number = document.createElement('span');
    number.className = 'line-number';
    number.textContent = String(i + 1).padStart(width, ' ');
    row.append(number, ` ${line}\n`);
    pre.append(row);
  });
  document.querySelector('#read-note').textContent = start >= 0
    ? `lines ${start + 1} to ${end + 1}: ${find}`
    : find ? `${JSON.stringify(find)} is not in this file` : '';
  if (start >= 0) document.getElementById(`L${start + 1}`).scrollIntoView({ block: 'center' });
}

main();
