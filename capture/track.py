"""Follow the printed patch between detections: markers re-detected every frame,
pyramidal Lucas-Kanade on the card's texture in between, one honest pose per frame.

Every frame ends in one of three states (:data:`patchlab.captures.POSE_SOURCES`):

* ``detected`` -- enough of the patch's markers were found in *this* frame; the
  pose is theirs (:class:`patchlab.capture.pose.PoseEstimator`). The tracker is
  re-anchored on it, with confidence 1 less the marker fit's residual.
* ``tracked`` -- no detection, but the card was followed from the previous frame:
  corners and texture points of the card (markers, patch, paper edges; chosen by
  :func:`cv2.goodFeaturesToTrack` inside the card's outline) are carried by
  pyramidal Lucas-Kanade (J.-Y. Bouguet, "Pyramidal implementation of the Lucas
  Kanade feature tracker", 2001), started from a constant-velocity prediction of the
  card's homography (the motion model), checked forward-backward (Kalal et al.,
  "Forward-backward error", ICPR 2010), and a homography from the printed card to
  the image is fitted to the survivors with RANSAC. The pose is computed from it
  exactly as a detection's would be, and marked ``tracked``, never ``detected``.
* ``lost`` -- neither: no pose at all.

Tracking error is bounded. Each tracked frame adds its homography fit's RMS
residual to a drift estimate (errors of independent steps add in quadrature:
``drift = sqrt(sum rms**2)``) and the tracker gives up -- the frame is ``lost`` --
when the drift passes ``max_drift_frac`` of the patch's apparent side, when too few
points survive or too few agree with the homography, or after ``max_age`` frames
without a detection. ``confidence`` of a tracked pose is the inlier fraction times
``1 - drift / bound``: 1 right after a detection, falling to 0 at the bound.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from patchlab.captures import DETECTED, LOST, TRACKED

from .pose import MarkerDetector, MarkerMatch, MarkerPose, PatchTarget, PoseEstimator, fit_homography


@dataclass(frozen=True)
class TrackerConfig:
    """Knobs of :class:`PatchTracker` (recorded in a capture's summary).

    Attributes:
        enabled: track between detections at all (False: every frame without
            markers is ``lost``).
        max_points: texture points followed per frame.
        win_px: largest Lucas-Kanade window side; a small card gets a smaller one
            (a third of its side, at least 7 px) so the windows stay on the card and
            the background moving behind it does not pull them; ``levels``: pyramid
            levels above the image.
        fb_max_px: largest forward-backward error a point may have.
        ransac_px: RANSAC inlier threshold of the homography fit.
        min_points: fewest inliers that still make a tracked pose.
        min_inlier_frac: fewest inliers, as a share of the tracked points.
        max_drift_frac: drift bound as a fraction of the patch's apparent side.
        max_age: most frames tracked since the last detection.
        max_misses: frames in a row the tracker may fail (those frames are
            ``lost``) and still pick the card up again from its last good frame,
            with the motion model carried forward.
        min_ncc: the card must still look like it did at the last detection:
            normalised cross-correlation of the keyframe's card, warped to the
            tracked pose, with this frame's (below it the card was covered,
            turned away or is gone, and tracking stops).
    """

    enabled: bool = True
    max_points: int = 120
    win_px: int = 15
    levels: int = 3
    fb_max_px: float = 2.0
    ransac_px: float = 1.5
    min_points: int = 10
    min_inlier_frac: float = 0.5
    max_drift_frac: float = 0.03
    max_age: int = 150
    max_misses: int = 4
    min_ncc: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrackStep:
    """What the tracker made of one frame."""

    source: str  # detected | tracked | lost
    pose: MarkerPose | None
    confidence: float
    points: int = 0  # texture points followed into this frame (tracked frames)
    inliers: int = 0
    residual_px: float | None = None  # homography fit RMS of this frame
    drift_px: float = 0.0  # accumulated since the last detection
    age: int = 0  # frames since the last detection


#: Share of the last frame-to-frame motion the motion model expects again.
VELOCITY_DAMPING = 0.7
#: Weight of one detected marker corner against one tracked texture point when both are fitted.
MARKER_WEIGHT = 8


def _card_outline(target: PatchTarget) -> np.ndarray:
    """The card's outline in printed coordinates: hull of the marker and patch corners."""
    pts = np.concatenate([*target.marker_corners.values(), target.patch_corners]).astype(np.float32)
    return cv2.convexHull(pts).reshape(-1, 2).astype(np.float64)


def _project(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return cv2.perspectiveTransform(np.asarray(pts, np.float64).reshape(-1, 1, 2), H).reshape(-1, 2)


class PatchTracker:
    """Detection every frame, Lucas-Kanade tracking in between (see the module docstring).

    Not thread-safe: one tracker follows one stream, frame after frame.

    Args:
        estimator: turns markers (or tracked points) into a pose.
        detector: finds the markers; the tracker hands it where it expects them.
        config: see :class:`TrackerConfig`.
    """

    def __init__(
        self, estimator: PoseEstimator, detector: MarkerDetector, config: TrackerConfig = TrackerConfig()
    ) -> None:
        self.estimator, self.detector, self.config = estimator, detector, config
        self._outlines = {t.copy: _card_outline(t) for t in estimator.targets}
        self.reset()

    def reset(self) -> None:
        """Forget the patch (e.g. after a cut in the video)."""
        self._prev_gray: np.ndarray | None = None  # the last frame with a pose
        self._target: PatchTarget | None = None
        self._H: np.ndarray | None = None  # printed -> image homography of that frame
        self._vel: np.ndarray | None = None  # per-frame motion: a damped image translation
        self._pts_obj: np.ndarray | None = None  # printed coordinates of the points followed
        self._drift2 = 0.0
        self._age = 0
        self._misses = 0  # frames since the last pose
        self._last_inliers: tuple[np.ndarray, np.ndarray] | None = None
        self._key: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (gray, H, points) of the last detection

    # ----------------------------------------------------------------------------------
    def _predict(self) -> np.ndarray | None:
        """Constant-velocity prediction of this frame's homography (the motion model)."""
        if self._H is None:
            return None
        if self._vel is None:
            return self._H
        P = np.linalg.matrix_power(self._vel, self._misses + 1) @ self._H
        return P / P[2, 2]

    def _hint(self, H: np.ndarray | None) -> tuple[float, float, float, float, float] | None:
        if H is None or self._target is None:
            return None
        pts = _project(H, self._outlines[self._target.copy])
        (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
        sides = [
            np.linalg.norm(np.diff(_project(H, c)[[0, 1, 2, 3, 0]], axis=0), axis=1).mean()
            for c in self._target.marker_corners.values()
        ]
        return float(x0), float(y0), float(x1), float(y1), float(np.min(sides))

    def _bootstrap(self, gray: np.ndarray, dets: list) -> MarkerMatch | None:
        """One marker alone is too few for a pose, but it says where its card's other
        markers must be: look for them there, enlarged, and match again."""
        by_id = {m: t for t in self.estimator.targets for m in t.marker_corners}
        for d in dets:
            t = by_id.get(d.id)
            if t is None:
                continue
            H, _ = fit_homography(t.marker_corners[d.id], d.corners)
            if H is None:
                continue
            want = {i: _project(H, c) for i, c in t.marker_corners.items() if i != d.id}
            more = self.detector.detect_at(gray, want)
            if more:
                m = self.estimator.match([d, *more])
                if m is not None:
                    return m
        return None

    def _predicted_markers(self, H: np.ndarray | None) -> dict[int, np.ndarray] | None:
        if H is None or self._target is None:
            return None
        return {i: _project(H, c) for i, c in self._target.marker_corners.items()}

    def _seed(self, gray: np.ndarray, H: np.ndarray, target: PatchTarget) -> None:
        """Choose texture points on the card under homography ``H`` for the next frame."""
        outline = _project(H, self._outlines[target.copy])
        h, w = gray.shape
        x0, y0 = np.floor(outline.min(0)).astype(int) - 2
        x1, y1 = np.ceil(outline.max(0)).astype(int) + 3
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if x1 - x0 < 6 or y1 - y0 < 6:
            self._pts_obj = None
            return
        mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.fillConvexPoly(mask, np.round(outline - [x0, y0]).astype(np.int32), 255)
        side = math.sqrt(max(cv2.contourArea(outline.astype(np.float32)), 1.0))
        mask = cv2.erode(mask, np.ones((3, 3), np.uint8))  # keep off the card's edge, which the background crosses
        min_dist = max(2.0, side / 14)
        pts = cv2.goodFeaturesToTrack(
            gray[y0:y1, x0:x1], self.config.max_points, 0.01, min_dist, mask=mask, blockSize=3
        )
        img = np.zeros((0, 2)) if pts is None else pts.reshape(-1, 2).astype(np.float64) + [x0, y0]
        # the marker corners always go in: the strongest corners of the card
        corners = np.concatenate(list(target.marker_corners.values()))
        img = np.concatenate([img, _project(H, corners)])
        inside = (img[:, 0] >= 1) & (img[:, 0] <= w - 2) & (img[:, 1] >= 1) & (img[:, 1] <= h - 2)
        img = img[inside]
        self._pts_obj = _project(np.linalg.inv(H), img) if len(img) else None

    def _track(self, gray: np.ndarray, H_pred: np.ndarray) -> tuple[np.ndarray | None, int, int, float]:
        """LK from the previous frame; returns ``(H, points, inliers, rms)`` and keeps the
        inlier correspondences in ``self._last_inliers``."""
        cfg = self.config
        self._last_inliers = None
        if self._pts_obj is None or self._prev_gray is None or self._H is None:
            return None, 0, 0, float("inf")
        p0 = _project(self._H, self._pts_obj).astype(np.float32).reshape(-1, 1, 2)
        guess = _project(H_pred, self._pts_obj).astype(np.float32).reshape(-1, 1, 2)
        crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03)
        win = self._win()
        lk = dict(winSize=(win, win), maxLevel=self._levels(win), criteria=crit)
        p1, st, _ = cv2.calcOpticalFlowPyrLK(
            self._prev_gray, gray, p0, guess.copy(), flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **lk
        )
        if p1 is None:
            return None, 0, 0, float("inf")
        pb, st2, _ = cv2.calcOpticalFlowPyrLK(
            gray, self._prev_gray, p1, p0.copy(), flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **lk
        )
        fb = np.linalg.norm((pb - p0).reshape(-1, 2), axis=1)
        ok = (st.ravel() == 1) & (st2.ravel() == 1) & (fb < cfg.fb_max_px)
        n = int(ok.sum())
        if n < cfg.min_points:
            return None, n, 0, float("inf")
        obj, img = self._pts_obj[ok], p1.reshape(-1, 2)[ok].astype(np.float64)
        H, inl = cv2.findHomography(obj, img, cv2.RANSAC, cfg.ransac_px)
        if H is None:
            return None, n, 0, float("inf")
        inl = inl.ravel().astype(bool)
        k = int(inl.sum())
        if k < cfg.min_points or k < cfg.min_inlier_frac * n:
            return None, n, k, float("inf")
        H, rms = fit_homography(obj[inl], img[inl])  # least squares on the inliers
        self._last_inliers = (obj[inl], img[inl])
        return H, n, k, rms

    # ----------------------------------------------------------------------------------
    def step(self, gray: np.ndarray) -> TrackStep:
        """Detect, track and fuse on the next frame ``gray`` (``(H, W)`` uint8)."""
        cfg = self.config
        H_pred = self._predict()
        dets = self.detector.detect(gray, hint=self._hint(H_pred), markers=self._predicted_markers(H_pred))
        match: MarkerMatch | None = self.estimator.match(dets)
        if match is None and dets:
            match = self._bootstrap(gray, dets)
        if match is not None:
            obj, img, H, fused = match.obj, match.img, match.homography, 0
            if len(match.ids) < 4 and cfg.enabled and H_pred is not None and self._target is match.target:
                obj, img, H, fused = self._fuse(gray, H_pred, match)
            pose = self.estimator.pose(
                match.target,
                obj,
                img,
                match.ids,
                homography=H,
                source=DETECTED,
                confidence=self._detection_confidence(match),
                tracked_points=fused,
            )
            if pose is not None:
                self._anchor(gray, H, match.target)
                return TrackStep(DETECTED, pose, pose.confidence)
        if not cfg.enabled or H_pred is None or self._target is None:
            self.reset()
            return TrackStep(LOST, None, 0.0)
        H, n, k, rms = self._track(gray, H_pred)
        target = self._target
        age = self._age + 1 + self._misses
        if H is not None:
            drift2 = self._drift2 + rms**2
            ref, ncc = self._refine(gray, H)
            if ncc < cfg.min_ncc:  # the card no longer looks like itself: stop
                return self._miss(n, k, rms, age, give_up=True)
            if ref is not None:  # aligned to the last detection: no drift carried over
                H, rms = ref
                drift2 = rms**2
            quad = _project(H, target.patch_corners)
            side = math.sqrt(max(cv2.contourArea(quad.astype(np.float32)), 1.0))
            bound = cfg.max_drift_frac * side
            drift = math.sqrt(drift2)
            if drift <= bound and age <= cfg.max_age:
                conf = (k / max(n, 1)) * max(0.0, 1.0 - drift / bound)
                corners = np.concatenate(list(target.marker_corners.values()))
                pose = self.estimator.pose(
                    target, corners, _project(H, corners), (), homography=H, source=TRACKED, confidence=conf
                )
                if pose is not None:
                    self._accept(gray, H / H[2, 2])
                    self._drift2, self._age = drift2, age
                    return TrackStep(TRACKED, pose, conf, points=n, inliers=k, residual_px=rms, drift_px=drift, age=age)
                return self._miss(n, k, rms, age, give_up=True)
            return self._miss(n, k, rms, age, give_up=True)  # past the error bound: stop tracking
        return self._miss(n, k, None, age, give_up=False)

    def _win(self) -> int:
        """LK window for the card's current apparent size (odd, 7..win_px)."""
        if self._H is None or self._target is None:
            return self.config.win_px
        return int(np.clip(int(self._card_side() / 3) | 1, 7, self.config.win_px))

    def _levels(self, win: int) -> int:
        """Pyramid levels that keep the card at least two windows wide at the top level
        (above that the background, not the card, decides where the window goes)."""
        side = self._card_side()
        return int(np.clip(math.floor(math.log2(max(side / (2 * win), 1.0))), 0, self.config.levels))

    def _card_side(self) -> float:
        if self._H is None or self._target is None:
            return float("inf")
        return math.sqrt(
            max(cv2.contourArea(_project(self._H, self._outlines[self._target.copy]).astype(np.float32)), 1.0)
        )

    def _refine(self, gray: np.ndarray, H: np.ndarray) -> tuple[tuple[np.ndarray, float] | None, float]:
        """Align the frame to the last detection (the keyframe) instead of the last frame.

        The keyframe is warped into this frame by the frame-to-frame estimate ``H``,
        so its texture looks as the card does now; Lucas-Kanade then measures what
        is left, and a homography from the printed card to the corrected points
        replaces ``H``. Errors no longer add up from frame to frame: the residual is
        against a detection. Returns ``((H, rms) or None when too few points agree,
        ncc)``: ``ncc`` is how alike the warped keyframe and this frame are on the card.
        """
        cfg = self.config
        if self._key is None or self._target is None:
            return None, 1.0
        kgray, kH, kobj = self._key
        h, w = gray.shape
        outline = _project(H, self._outlines[self._target.copy])
        x0, y0 = np.floor(outline.min(0)).astype(int) - cfg.win_px
        x1, y1 = np.ceil(outline.max(0)).astype(int) + cfg.win_px
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None, 1.0
        T = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
        warped = cv2.warpPerspective(
            kgray,
            T @ H @ np.linalg.inv(kH),
            (x1 - x0, y1 - y0),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        cur = gray[y0:y1, x0:x1]
        # exposure and glare change between the keyframe and now: match the keyframe's
        # brightness and contrast on the card to this frame's before comparing textures
        mask = np.zeros(cur.shape, np.uint8)
        cv2.fillConvexPoly(mask, np.round(outline - [x0, y0]).astype(np.int32), 1)
        m1, s1 = cv2.meanStdDev(warped, mask=mask)
        m2, s2 = cv2.meanStdDev(cur, mask=mask)
        if s1[0, 0] > 1.0:
            warped = cv2.convertScaleAbs(
                warped, alpha=float(s2[0, 0] / s1[0, 0]), beta=float(m2[0, 0] - m1[0, 0] * s2[0, 0] / s1[0, 0])
            )
        sel = mask.astype(bool)
        a, b = warped[sel].astype(np.float32), cur[sel].astype(np.float32)
        a, b = a - a.mean(), b - b.mean()
        ncc = float((a * b).sum() / max(math.sqrt(float((a * a).sum() * (b * b).sum())), 1e-6))
        p0 = (_project(H, kobj) - [x0, y0]).astype(np.float32).reshape(-1, 1, 2)
        crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.01)
        win = self._win()
        lk = dict(winSize=(win, win), maxLevel=1, criteria=crit)
        p1, st, _ = cv2.calcOpticalFlowPyrLK(warped, cur, p0, None, **lk)
        if p1 is None:
            return None, ncc
        pb, st2, _ = cv2.calcOpticalFlowPyrLK(cur, warped, p1, None, **lk)
        fb = np.linalg.norm((pb - p0).reshape(-1, 2), axis=1)
        ok = (st.ravel() == 1) & (st2.ravel() == 1) & (fb < 0.5 * cfg.fb_max_px)
        n = int(ok.sum())
        if n < cfg.min_points:
            return None, ncc
        obj, img = kobj[ok], p1.reshape(-1, 2)[ok].astype(np.float64) + [x0, y0]
        Hr, inl = cv2.findHomography(obj, img, cv2.RANSAC, cfg.ransac_px)
        if Hr is None:
            return None, ncc
        inl = inl.ravel().astype(bool)
        if inl.sum() < max(cfg.min_points, cfg.min_inlier_frac * len(kobj)):
            return None, ncc
        Hr, rms = fit_homography(obj[inl], img[inl])
        return (None if Hr is None else (Hr / Hr[2, 2], rms)), ncc

    def _fuse(
        self, gray: np.ndarray, H_pred: np.ndarray, match: MarkerMatch
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Markers found, but fewer than four: add the tracked texture points that agree
        with them to the fit (each marker corner weighs :data:`MARKER_WEIGHT` points).
        The pose stays a detection (markers were seen in this frame); its
        ``tracked_points`` says how many tracked points went in."""
        H_t, _, k, _ = self._track(gray, H_pred)
        if H_t is None or self._last_inliers is None:
            return match.obj, match.img, match.homography, 0
        tobj, timg = self._last_inliers
        err = np.linalg.norm(_project(match.homography, tobj) - timg, axis=1)
        agree = err < max(2.0, 3 * self.config.ransac_px)
        if agree.sum() < self.config.min_points:
            return match.obj, match.img, match.homography, 0
        w = MARKER_WEIGHT
        obj = np.concatenate([np.repeat(match.obj, w, 0), tobj[agree]])
        img = np.concatenate([np.repeat(match.img, w, 0), timg[agree]])
        H, _ = fit_homography(obj, img)
        if H is None:
            return match.obj, match.img, match.homography, 0
        return obj, img, H, int(agree.sum())

    def _miss(self, n: int, k: int, rms: float | None, age: int, *, give_up: bool) -> TrackStep:
        out = TrackStep(
            LOST, None, 0.0, points=n, inliers=k, residual_px=rms, drift_px=math.sqrt(self._drift2), age=age
        )
        self._misses += 1
        if give_up or self._misses > self.config.max_misses:
            self.reset()
        return out

    def _accept(self, gray: np.ndarray, H: np.ndarray) -> None:
        """``H`` is this frame's pose: update the motion model and re-seed the points."""
        if self._H is not None and self._target is not None:
            # the motion model: the card centre's image velocity, damped (a hand's
            # jitter does not continue; a shape change estimated on a small card is noise)
            c = self._target.centre
            v = (_project(H, c[None])[0] - _project(self._H, c[None])[0]) / (self._misses + 1)
            self._vel = np.array(
                [[1.0, 0.0, VELOCITY_DAMPING * v[0]], [0.0, 1.0, VELOCITY_DAMPING * v[1]], [0.0, 0.0, 1.0]]
            )
        self._H, self._misses, self._prev_gray = H, 0, gray
        if self.config.enabled and self._target is not None:
            self._seed(gray, H, self._target)

    @staticmethod
    def _detection_confidence(match: MarkerMatch) -> float:
        """1 for four markers fitting to a tenth of a cell; less for fewer markers or a loose fit."""
        share = min(1.0, len(match.ids) / 4.0)
        fit = 1.0 / (1.0 + (match.rms_px / max(0.1 * match.marker_px / 6.0, 0.05)) ** 2)
        return float(0.5 + 0.5 * share * max(fit, 0.5)) if len(match.ids) >= 2 else 0.5 * fit

    def _anchor(self, gray: np.ndarray, H: np.ndarray, target: PatchTarget) -> None:
        if self._target is None or self._target.copy != target.copy:
            self.reset()
            self._target = target
        self._drift2, self._age = 0.0, 0
        self._accept(gray, H / H[2, 2])
        self._key = None if self._pts_obj is None else (gray, self._H, self._pts_obj)
