// The mask as a list of operations in image coordinates (strokes, erasures, loaded mask
// files, clears), not as pixels. Painting draws only the new segment on a screen-sized
// canvas, so it stays smooth on a 12-megapixel photo; undo/redo replays the list; the mask
// sent to the server is the same list rendered once at the image's full size.

const PAINT = "#ff2d55"; // on screen, shown through the layer's opacity

export class MaskLayer {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.width = 0; // image size, in image pixels
    this.height = 0;
    this.scale = 1; // canvas pixels per image pixel
    this.ops = [];
    this.undone = [];
    this.current = null;
  }

  // A new image: no operations, nothing to redo.
  reset(width, height) {
    this.width = width;
    this.height = height;
    this.ops = [];
    this.undone = [];
    this.current = null;
    this.render();
  }

  // The canvas changed size (window resize, new image): redraw at the new scale.
  resize(canvasWidth, canvasHeight) {
    this.canvas.width = canvasWidth;
    this.canvas.height = canvasHeight;
    this.scale = this.width ? canvasWidth / this.width : 1;
    this.render();
  }

  get canUndo() { return this.ops.length > 0; }
  get canRedo() { return this.undone.length > 0; }

  // Start a stroke at image point (x, y) with ``radius`` in image pixels.
  begin(x, y, radius, erase) {
    this.current = { kind: "stroke", erase, radius, points: [[x, y]] };
    this.ops.push(this.current);
    this.undone = [];
    drawStroke(this.ctx, this.current, this.scale, PAINT, 0); // a dot: a click paints too
  }

  extend(x, y) {
    const op = this.current;
    if (!op) return;
    const from = op.points.length - 1;
    op.points.push([x, y]);
    drawStroke(this.ctx, op, this.scale, PAINT, from); // only the new segment
  }

  end() {
    this.current = null;
  }

  // A loaded mask file (already turned into white-on-transparent at any size).
  addImage(bitmap) {
    this.ops.push({ kind: "image", bitmap });
    this.undone = [];
    this.render();
  }

  clear() {
    if (!this.ops.length || this.ops[this.ops.length - 1].kind === "clear") return;
    this.ops.push({ kind: "clear" });
    this.undone = [];
    this.render();
  }

  undo() {
    if (!this.ops.length) return;
    this.undone.push(this.ops.pop());
    this.render();
  }

  redo() {
    if (!this.undone.length) return;
    this.ops.push(this.undone.pop());
    this.render();
  }

  render() {
    const { ctx, canvas } = this;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    replay(ctx, this.ops, this.scale, canvas.width, canvas.height, PAINT);
  }

  // Whether anything is painted (read from the screen-sized canvas: cheap, and any stroke
  // covers at least one screen pixel).
  isEmpty() {
    const { width, height } = this.canvas;
    if (!width || !height || !this.ops.length) return true;
    const alpha = this.ctx.getImageData(0, 0, width, height).data;
    for (let i = 3; i < alpha.length; i += 4) if (alpha[i]) return false;
    return true;
  }

  // The mask at the image's full size as a PNG: white = fill, black = keep.
  async toBlob() {
    const paint = makeCanvas(this.width, this.height);
    const pctx = paint.getContext("2d");
    replay(pctx, this.ops, 1, this.width, this.height, "#ffffff");
    const out = makeCanvas(this.width, this.height);
    const octx = out.getContext("2d");
    octx.fillStyle = "#000000";
    octx.fillRect(0, 0, this.width, this.height);
    octx.drawImage(paint, 0, 0);
    return canvasToBlob(out);
  }
}

function replay(ctx, ops, scale, width, height, color) {
  // After the last clear nothing earlier shows: start there.
  let start = 0;
  ops.forEach((op, i) => { if (op.kind === "clear") start = i + 1; });
  for (const op of ops.slice(start)) {
    if (op.kind === "stroke") {
      drawStroke(ctx, op, scale, color, 0);
    } else if (op.kind === "image") {
      ctx.save();
      ctx.globalCompositeOperation = "source-over";
      if (color !== "#ffffff") tint(ctx, op.bitmap, width, height, color);
      else ctx.drawImage(op.bitmap, 0, 0, width, height);
      ctx.restore();
    }
  }
}

// Draw points[from..] of a stroke: round caps and joins, so a stroke is the union of discs.
function drawStroke(ctx, op, scale, color, from) {
  const pts = op.points;
  ctx.save();
  ctx.globalCompositeOperation = op.erase ? "destination-out" : "source-over";
  ctx.fillStyle = ctx.strokeStyle = color;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.lineWidth = 2 * op.radius * scale;
  if (pts.length === 1 || from === 0) {
    ctx.beginPath();
    ctx.arc(pts[0][0] * scale, pts[0][1] * scale, op.radius * scale, 0, 2 * Math.PI);
    ctx.fill();
  }
  if (pts.length > 1) {
    ctx.beginPath();
    const first = Math.max(from, 0);
    ctx.moveTo(pts[first][0] * scale, pts[first][1] * scale);
    for (let i = first + 1; i < pts.length; i++) ctx.lineTo(pts[i][0] * scale, pts[i][1] * scale);
    ctx.stroke();
  }
  ctx.restore();
}

// A white-on-transparent mask drawn in the on-screen colour.
function tint(ctx, bitmap, width, height, color) {
  const layer = makeCanvas(width, height);
  const lctx = layer.getContext("2d");
  lctx.drawImage(bitmap, 0, 0, width, height);
  lctx.globalCompositeOperation = "source-in";
  lctx.fillStyle = color;
  lctx.fillRect(0, 0, width, height);
  ctx.drawImage(layer, 0, 0);
}

// A mask file (white or any colour = fill, black or transparent = keep) as white on
// transparent, which is how the layer composes paint.
export async function maskFileToBitmap(file) {
  const source = await createImageBitmap(file);
  const canvas = makeCanvas(source.width, source.height);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(source, 0, 0);
  const pixels = ctx.getImageData(0, 0, source.width, source.height);
  const d = pixels.data;
  for (let i = 0; i < d.length; i += 4) {
    const fill = d[i + 3] > 0 && (d[i] || d[i + 1] || d[i + 2]);
    d[i] = d[i + 1] = d[i + 2] = 255;
    d[i + 3] = fill ? 255 : 0;
  }
  ctx.putImageData(pixels, 0, 0);
  return { bitmap: await createImageBitmap(canvas), width: source.width, height: source.height };
}

export function makeCanvas(width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  return canvas;
}

export function canvasToBlob(canvas) {
  return new Promise((resolve, reject) => {
    canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("the browser could not encode the mask"))), "image/png");
  });
}
